// Cancellation and deadlines: terminating an execution and its tree from outside its body (cancel(),
// a timeout, shutdown), raising in the fiber that runs it, and the per-execution timeouts on the
// core's Timer.

#include <string>
#include <vector>

#include "bindings.hpp"
#include "distaff/timer.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

namespace {

Timer* g_timer = nullptr;  // one timer thread per process, started on the first timeout

// raise_in_fiber: queues `exc_type` to be raised in `ts` at its next bytecode boundary.
// PyThreadState_SetAsyncExc addresses thread states by OS thread id, which every fiber on a worker
// shares with its worker; for the duration of the call the target gets an id no real thread has.
// The GIL is held throughout, so nothing else reads the id meanwhile.
bool raise_in_fiber(PyThreadState* ts, PyObject* exc_type) {
  const unsigned long saved = ts->thread_id;
  const unsigned long unique = ~0UL - 1;
  ts->thread_id = unique;
  const int n = PyThreadState_SetAsyncExc(unique, exc_type);
  ts->thread_id = saved;
  return n == 1;
}

// The deadline hooks (distaff/timer.hpp): the arg is the Python Execution, one reference held for
// the timer. The core decides which hook runs and when; here only Python happens.
void timeout_fired(Execution& ex, void* arg) {
  // On the timer thread: a plain OS thread, never a fiber, so PyGILState is the right API here.
  // (At finalisation the reference is leaked: the objects are going away with the interpreter.)
  if (interpreter_finalizing()) return;
  PyGILState_STATE g = PyGILState_Ensure();
  auto* pe = static_cast<PyExecution*>(arg);
  if (!ex.done()) {  // it was unfinished when the core claimed the deadline; it may have ended since
    double secs = 0;
    if (pe->extra) {
      if (PyObject* t = PyDict_GetItemString(pe->extra, "timeout")) secs = PyFloat_AsDouble(t);
    }
    PyObject* exc = PyObject_CallFunction(TimeoutErrorType, "s",
        (std::string("execution ") + std::to_string(ex.id()) + " (" + ex.name() +
         ") was still running at its deadline (timeout=" + std::to_string(secs) + " s)").c_str());
    if (!exc) exc = fetch_exception();
    terminate(pe, State::failed, exc, TimeoutErrorType);
  }
  Py_DECREF(pe);  // the timer's reference
  PyGILState_Release(g);
}

// The deadline will never fire: on the thread that finished the execution (complete(), GIL held:
// every finish of a running execution in the bindings goes through it), re-armed it, or stopped
// the timer (stop_timer, GIL held again after the join).
void timeout_released(Execution&, void* arg) { Py_DECREF(static_cast<PyObject*>(arg)); }

constexpr DeadlineHooks kTimeoutHooks{&timeout_fired, &timeout_released};

}  // namespace

bool interrupt_of_this_body(PyObject* exc_type) {
  if (exc_type != CancelledError && exc_type != TimeoutErrorType && exc_type != InterruptedType) return false;
  Execution* e = current_execution();
  auto* pe = e ? static_cast<PyExecution*>(e->payload()) : nullptr;
  return pe && pe->tstate && pe->tstate == PyThreadState_Get() && e->done() && !pe->shielded;
}

bool requeue_interrupt(PyObject* exc_type) {
  return raise_in_fiber(PyThreadState_Get(), exc_type);
}

namespace {

// What terminate() asks of each execution of the tree (Execution::terminate_tree walks it).
struct Termination {
  PyExecution* root;
  State state;          // the root's outcome; its descendants are cancelled
  PyObject* value;      // the root's value (owned until complete() steals it)
  PyObject* async_exc;  // raised in the root's body; CancelledError in the descendants'
};

// ---- an interruption that lands in a callback ------------------------------------------------------
// raise_in_fiber's exception fires at the body's next bytecode boundary, which may belong to Python
// that CPython runs on the body's behalf and whose exceptions it only reports: a weakref callback or
// a __del__ run by the garbage collector (the CI saw WeakSet's _remove), an atexit-free finaliser.
// There it would be printed as "Exception ignored in ..." and lost, and the body would run on after
// its execution had ended. distaff's sys.unraisablehook wrapper (installed, chained to the hook it
// replaces, whenever an exception is queued into a running body) recognises that exception — raised
// in the fiber of a body that is still running although its execution has finished, and not
// shielded — and queues it again, so it fires at the body's next bytecode instead; everything else
// goes to the previous hook. The wrapper is C code: it runs no bytecode, so the re-queued exception
// cannot fire inside the hook itself.
PyObject* raw_unraisablehook(PyObject* prev, PyObject* args) {
  PyObject* et = PyObject_GetAttrString(args, "exc_type");
  if (!et) {
    PyErr_Clear();
  } else if (interrupt_of_this_body(et) && requeue_interrupt(et)) {
    Py_DECREF(et);
    Py_RETURN_NONE;
  }
  Py_XDECREF(et);
  if (prev == Py_None) prev = PySys_GetObject("__unraisablehook__");  // borrowed
  if (!prev) Py_RETURN_NONE;
  return PyObject_CallOneArg(prev, args);
}

PyMethodDef unraisablehook_def = {"unraisablehook", &raw_unraisablehook, METH_O,
                                  "distaff's sys.unraisablehook: re-raises an interruption that "
                                  "landed in a callback run by a body, else calls the previous hook"};

// ensure_unraisablehook: installs the wrapper over the current sys.unraisablehook unless it is
// already there (a hook installed later, pytest's per-test one for instance, is wrapped in turn).
void ensure_unraisablehook() {
  PyObject* cur = PySys_GetObject("unraisablehook");  // borrowed
  if (cur && PyCFunction_Check(cur) && PyCFunction_GET_FUNCTION(cur) == &raw_unraisablehook) return;
  PyObject* h = PyCFunction_New(&unraisablehook_def, cur ? cur : Py_None);
  if (!h || PySys_SetObject("unraisablehook", h) < 0) PyErr_Clear();
  Py_XDECREF(h);
}

// ---- an interruption the body swallowed ------------------------------------------------------------
// The exception raise_in_fiber queues fires once. A body that catches it and carries on outside the
// handler — `except Exception: pass`, or logging's Handler.handleError, which prints "--- Logging
// error ---" and returns — used to run on after its execution had ended (a loop that never waits ran
// until the process died, and the exit waited for it). Every *wait* of such a body raises again (the
// core's interrupt flag is level-triggered), so only Python that never waits needs more: the timer
// thread looks at the body again after kRedeliverFirst, then at doubling intervals up to
// kRedeliverMax, for as long as the body runs, and queues the interruption again when the body is
// running Python (not parked in a wait, which raises by itself), is not shielded, has none queued,
// and is not handling one — an `except` or `finally` block entered for a distaff.CancelledError or
// TimeoutError, or a `with` block's __exit__ for one, is clean-up and is left to finish.
constexpr auto kRedeliverFirst = std::chrono::milliseconds(10);
constexpr auto kRedeliverMax = std::chrono::milliseconds(320);

struct Redelivery {
  PyExecution* pe;  // one reference, dropped when the body has ended
  Clock::duration delay;
  std::uint64_t timer_id = 0;  // of its pending tick (end_redelivery cancels it)
  Timer* timer = nullptr;      // the timer it is on (not a later one, after a fork)
};

// drop_redelivery: `r` is over (GIL held).
void drop_redelivery(Redelivery* r) {
  PyExecution* pe = r->pe;
  if (pe->redelivery == r) pe->redelivery = nullptr;
  delete r;
  Py_DECREF(pe);
}

bool is_interrupt(PyObject* v) {
  return v && v != Py_None &&
         (PyObject_TypeCheck(v, reinterpret_cast<PyTypeObject*>(CancelledError)) ||
          PyObject_TypeCheck(v, reinterpret_cast<PyTypeObject*>(TimeoutErrorType)) ||
          PyObject_TypeCheck(v, reinterpret_cast<PyTypeObject*>(InterruptedType)));
}

}  // namespace

// handling_interrupt: `ts` is raising an interruption or running a handler (except, finally, a
// context manager's __exit__) entered for one. GIL held; `ts` is waiting for the GIL, or is the
// calling thread's (a wait raising the interruption again: raise_interrupted).
bool handling_interrupt(PyThreadState* ts) {
#if PY_VERSION_HEX >= 0x030C0000
  if (is_interrupt(ts->current_exception)) return true;
#else
  if (is_interrupt(ts->curexc_value)) return true;
  if (ts->curexc_type && (ts->curexc_type == CancelledError || ts->curexc_type == TimeoutErrorType ||
                          ts->curexc_type == InterruptedType)) {
    return true;
  }
#endif
  for (_PyErr_StackItem* it = ts->exc_info; it; it = it->previous_item) {
    if (is_interrupt(it->exc_value)) return true;
  }
  return false;
}

// ---- logging's locks left held by an interruption ----------------------------------------------------
// logging (3.11, 3.12) takes its locks as `self.acquire()` then `try: ... finally: self.release()`,
// and acquire()/release() are Python around an RLock: an interruption that fires at the bytecode
// boundary right after the RLock's acquire returns, or at the start of release(), leaves the lock
// held with nothing left to give it back. The body ends, and every other thread that logs through
// that handler — and logging.shutdown() at exit — then waits for good (a body looping on
// Handler.handle left the lock held in 16 of 40 timeouts). An RLock is owned by an OS thread, which
// every fiber of a worker shares: once the interrupted body has ended, a lock this thread still owns
// is one that body left, unless another fiber of this worker is suspended inside logging's code.
namespace {

// in_dir: does any frame of `ts` run code from a file under `dir` (a directory path ending in '/')?
bool in_dir(PyThreadState* ts, PyObject* dir) {
  PyFrameObject* f = PyThreadState_GetFrame(ts);
  bool found = false;
  while (f && !found) {
    PyCodeObject* code = PyFrame_GetCode(f);
    PyObject* name = PyObject_GetAttrString(reinterpret_cast<PyObject*>(code), "co_filename");
    Py_DECREF(code);
    if (!name) {
      PyErr_Clear();
    } else {
      found = PyUnicode_Check(name) && PyUnicode_Tailmatch(name, dir, 0, PY_SSIZE_T_MAX, -1) == 1;
      Py_DECREF(name);
    }
    PyFrameObject* back = PyFrame_GetBack(f);
    Py_DECREF(f);
    f = back;
  }
  Py_XDECREF(f);
  PyErr_Clear();
  return found;
}

// owned_here: does this OS thread own `lock` (an RLock's _is_owned())? False for anything else.
bool owned_here(PyObject* lock) {
  PyObject* owned = PyObject_CallMethod(lock, "_is_owned", nullptr);
  const int yes = owned ? PyObject_IsTrue(owned) : 0;
  Py_XDECREF(owned);
  PyErr_Clear();
  return yes == 1;
}

// release_owned: gives back every level of `lock` this OS thread owns.
void release_owned(PyObject* lock) {
  for (int i = 0; i < 1000 && owned_here(lock); ++i) {  // bounded: a lock that keeps claiming it is no RLock
    PyObject* r = PyObject_CallMethod(lock, "release", nullptr);
    if (!r) break;
    Py_DECREF(r);
  }
  PyErr_Clear();
}

// owned_logging_locks: logging's locks (the module's, each live handler's) this OS thread owns.
std::vector<PyObject*> owned_logging_locks(PyObject* logging) {
  std::vector<PyObject*> locks;
  auto keep = [&](PyObject* l) {  // takes the reference
    if (l && l != Py_None && owned_here(l)) {
      locks.push_back(l);
    } else {
      Py_XDECREF(l);
    }
  };
  keep(PyObject_GetAttrString(logging, "_lock"));
  PyErr_Clear();
  if (PyObject* list = PyObject_GetAttrString(logging, "_handlerList")) {
    if (PyList_Check(list)) {
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
        PyObject* h = PyObject_CallNoArgs(PyList_GET_ITEM(list, i));  // a weak reference
        if (h && h != Py_None) keep(PyObject_GetAttrString(h, "lock"));
        Py_XDECREF(h);
        PyErr_Clear();
      }
    }
    Py_DECREF(list);
  }
  PyErr_Clear();
  return locks;
}

}  // namespace

void release_logging_locks_left_by_interrupt(PyThreadState* ts) {
  PyObject* key = PyUnicode_FromString("logging");
  PyObject* logging = key ? PyImport_GetModule(key) : nullptr;
  Py_XDECREF(key);
  if (!logging) {  // never imported: no lock of it can be held
    PyErr_Clear();
    return;
  }
  // Almost always none is held: then that is all (a cancel of 20,000 parked sleepers does this
  // 20,000 times; the scan of the fibers below is only for a lock found held).
  std::vector<PyObject*> locks = owned_logging_locks(logging);
  if (!locks.empty()) {
    // The logging package's directory: logging.config and logging.handlers hold these locks too
    // (dictConfig keeps logging._lock while it calls the user's factories: an outsider's find).
    PyObject* path = PyObject_GetAttrString(logging, "__path__");
    PyObject* first = path && PySequence_Check(path) && PySequence_Size(path) > 0 ? PySequence_GetItem(path, 0) : nullptr;
    PyObject* dir = first && PyUnicode_Check(first) ? PyUnicode_FromFormat("%U/", first) : nullptr;
    Py_XDECREF(first);
    Py_XDECREF(path);
    PyErr_Clear();
    bool busy = !dir;
    // Another fiber of this worker (same OS thread id) suspended inside logging may hold a lock
    // rightfully (a handler whose emit waits in distaff): then nothing is touched.
    for (PyThreadState* t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(ts)); t && !busy;
         t = PyThreadState_Next(t)) {
      if (t != ts && t->thread_id == ts->thread_id && in_dir(t, dir)) busy = true;
    }
    Py_XDECREF(dir);
    for (PyObject* l : locks) {
      if (!busy) release_owned(l);
      Py_DECREF(l);
    }
  }
  Py_DECREF(logging);
  PyErr_Clear();
}

namespace {

void schedule_redelivery(Redelivery* r);

void redeliver_fired(void* arg) {
  // On the timer thread (a plain OS thread). At finalisation the record is leaked, as in timeout_fired.
  if (interpreter_finalizing()) return;
  PyGILState_STATE g = PyGILState_Ensure();
  auto* r = static_cast<Redelivery*>(arg);
  PyExecution* pe = r->pe;
  PyThreadState* ts = pe->tstate;  // set while the body runs (run_execution), under the GIL
  if (ts && pe->core->done()) {
    if (!pe->shielded && !ts->async_exc && !pe->core->parked() && !handling_interrupt(ts)) {
      // Not the execution's own CancelledError/TimeoutError again: an `except Exception` that
      // swallowed that one sits where the body spends its time, and would swallow every copy (an
      // outsider's retry loop and logging loop ran on through 35 re-deliveries in 10 s). Interrupted
      // is a BaseException: only the body's finally blocks and with-exits see it.
      raise_in_fiber(ts, InterruptedType);
    }
    r->delay = std::min<Clock::duration>(r->delay * 2, kRedeliverMax);
    schedule_redelivery(r);  // owns r again, or has dropped it
  } else {
    drop_redelivery(r);
  }
  PyGILState_Release(g);
}

// schedule_redelivery: takes over `r` (GIL held).
void schedule_redelivery(Redelivery* r) {
  try {
    if (!g_timer) g_timer = new Timer();
    r->timer_id = g_timer->schedule(Clock::now() + r->delay, &redeliver_fired, r);
    r->timer = g_timer;
    r->pe->redelivery = r;
    return;
  } catch (...) {  // the timer stopped (exit): nothing left to interrupt
  }
  drop_redelivery(r);
}


// ensure_logging_passes_interrupts: once per process, before any body is interrupted (a running one,
// or a parked one, which raises from its wait — maybe inside a handler's emit()):
// logging.Handler.handleError lets that interruption go on out of the logging call instead of
// printing "--- Logging error ---" and swallowing it (distaff._errors). It runs Python on the
// thread that interrupts — the main thread's cancel() or exit wait among them — where a signal
// handler may run in it and raise: that exception is kept for the program (clear_error_keeping_signals).
void ensure_logging_passes_interrupts() {
  static bool done = false;
  if (done) return;
  PyObject* r = PyObject_CallNoArgs(LoggingPassHook);
  if (r) {
    done = true;
    Py_DECREF(r);
  } else if (PyErr_ExceptionMatches(PyExc_Exception)) {
    done = true;  // it cannot be done: not tried again
    PyErr_Clear();
  } else {
    clear_error_keeping_signals();  // a signal handler ran in it and raised: tried again next time
  }
}

bool finish_terminated(Execution& ex, bool was_parked, void* arg) {
  auto* t = static_cast<Termination*>(arg);
  const bool root = &ex == t->root->core;
  auto* p = root ? t->root : static_cast<PyExecution*>(ex.payload());
  if (!root && (!p || p->detached)) return false;  // (detached work is never a recorded child)
  bool finished;
  PyObject* exc;
  if (root) {
    finished = complete(p, t->state, t->value);
    t->value = nullptr;
    exc = t->async_exc;
  } else {
    finished = complete(p, State::cancelled, nullptr);
    exc = CancelledError;
  }
  // A parked body was woken by interrupt() and raises itself when it resumes (raise_interrupted,
  // which starts the re-delivery watch then); one running Python gets the exception at its next
  // bytecode, unless it is shielded (pe_shield). Either may swallow it and run on: the re-delivery
  // watches both. (Session 12, outsider: a body parked in `distaff.sleep` inside `try: ... except
  // Exception:` went on for good — each later wait raised at once and was swallowed too, and
  // nothing re-delivered — and the exit waited for it.) Not armed here for a parked body: with
  // 50,000 sleepers cancelled at once, the ticks of those still waiting for their worker to resume
  // them took the GIL ~10 times each and made the cancel 6x slower (session 13).
  // Before any interruption of a body (a parked one raises it from its wait, which may be inside a
  // handler's emit() too: an outsider's find), handleError lets it through (distaff._errors).
  if (finished && p->tstate) ensure_logging_passes_interrupts();
  if (finished && p->tstate && !was_parked) {
    if (!p->shielded) {
      ensure_unraisablehook();
      if (raise_in_fiber(p->tstate, exc)) {
        p->interrupt_sent = 1;
        watch_swallowed(p);
      }
    } else if (!p->deferred) {
      p->deferred = exc;  // raised when a deferring section ends (raw_deferring_call), if one runs
    }
  }
  return finished;
}

}  // namespace

void watch_swallowed(PyExecution* pe) {
  if (pe->redelivery || !pe->tstate || pe->shielded) return;  // watched already; not running; shielded
  Py_INCREF(pe);
  schedule_redelivery(new Redelivery{pe, kRedeliverFirst});
}

void end_redelivery(PyExecution* pe) {
  auto* r = static_cast<Redelivery*>(pe->redelivery);
  // A tick that already left the queue waits for the GIL this thread holds: it finds the body
  // ended and drops the record itself.
  if (r && r->timer == g_timer && g_timer && g_timer->cancel(r->timer_id)) drop_redelivery(r);
}

bool terminate(PyExecution* pe, State state, PyObject* value, PyObject* async_exc) {
  Termination t{pe, state, value, async_exc};
  const bool finished = pe->core->terminate_tree(&finish_terminated, &t);
  Py_XDECREF(t.value);  // not consumed: it was finished already
  return finished;
}

Py_ssize_t cancel_running(PyObject* engine) {
  // From now on no body of this engine starts, and one that a worker took but did not start yet (it
  // waits for the GIL this thread holds, so it is not in the running list) is cancelled as it starts
  // (run_execution checks Scheduler::bodies_cancelled()).
  if (EngineCore* eng = engine_from_capsule(engine)) {
    eng->scheduler->cancel_bodies();
  } else {
    PyErr_Clear();
  }
  // Snapshot first: terminating runs done-callbacks (Python code) that may start or end bodies.
  Py_ssize_t n = 0;
  for (PyObject* o : running_bodies(engine)) {
    if (terminate(as_pe(o), State::cancelled, nullptr, CancelledError)) ++n;
    Py_DECREF(o);
  }
  return n;
}

void timer_after_fork() {
  // The timer thread does not exist in a forked child; forget it (leaked, not destroyed: its mutex
  // may have been held at fork) so the next timeout starts a new one.
  g_timer = nullptr;
}

namespace {

// arm_timeout(execution, seconds): the execution fails with distaff.TimeoutError if still running
// `seconds` from now. Called by the facade at the start of a body.
PyObject* raw_arm_timeout(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2 || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "arm_timeout(execution, seconds)");
    return nullptr;
  }
  PyExecution* pe = as_pe(a[0]);
  Clock::time_point deadline;
  if (!parse_timeout(a[1], deadline)) return nullptr;
  if (pe->core->done() || deadline == Clock::time_point::max()) Py_RETURN_NONE;
  track(pe);
  if (!pe->extra && !(pe->extra = PyDict_New())) return nullptr;
  if (PyDict_SetItemString(pe->extra, "timeout", a[1]) < 0) return nullptr;
  if (!g_timer) g_timer = new Timer();
  Py_INCREF(pe);  // the timer's reference, until one of the hooks above drops it
  try {
    // Replaces a deadline armed before (its release runs here); false: it finished meanwhile.
    if (!g_timer->arm(*pe->core, deadline, kTimeoutHooks, pe)) Py_DECREF(pe);
  } catch (...) {
    Py_DECREF(pe);
    translate_current_exception();
    return nullptr;
  }
  Py_RETURN_NONE;
}

// stop_timer(): joins the timer thread (at exit, before finalisation).
PyObject* raw_stop_timer(PyObject*, PyObject*) {
  // The pending deadlines are released by stop() itself (timeout_released); what else was queued
  // is swallowed-interrupt watches (Redelivery records), dropped here.
  if (g_timer) {
    for (void* a : g_timer->stop()) drop_redelivery(static_cast<Redelivery*>(a));
  }
  Py_RETURN_NONE;
}

// ---- sections that take or give back a unit: interrupts deferred to their end ------------------------
// `with lock:` on a distaff.Lock/Semaphore calls __enter__ and __exit__, which are Python: an
// interrupt (cancel, timeout) that fired at a bytecode boundary inside them after the unit was
// taken — or inside release before the hand-over — lost the unit for good (an outsider measured a
// Lock left held in 74 of 200 timed-out bodies). __enter__/__exit__ are therefore this C function,
// bound as methods: it runs `self.<name>(*args)` with the body's interrupts deferred (shielded; one
// already queued is taken off the thread state) and queues the deferred one again when the call
// returns. Being C, it leaves no boundary between the take and the `with` block: the interrupt
// fires inside the block, whose __exit__ gives the unit back. A wait inside the call stays
// interruptible (a parked body is woken by interrupt() whatever the shield). Outside a body's fiber
// (threads, coroutines) it is a plain call.
// call_deferring: self.<name>() with the interrupts of the body running here deferred (see above).
PyObject* call_deferring(PyObject* self, PyObject* name) {
  Execution* e = current_execution();
  auto* pe = e ? static_cast<PyExecution*>(e->payload()) : nullptr;
  PyThreadState* ts = PyThreadState_Get();
  if (!pe || pe->tstate != ts || pe->shielded) return PyObject_CallMethodNoArgs(self, name);
  pe->shielded = 1;
  pe->deferred = nullptr;
  PyObject* stashed = ts->async_exc;  // queued before the section: fired at its end instead
  ts->async_exc = nullptr;
  if (stashed) pe->interrupt_sent = 0;  // taken back before the body saw it (raise_interrupted)
  PyObject* r = PyObject_CallMethodNoArgs(self, name);
  pe->shielded = 0;
  PyObject* pending = stashed ? stashed : pe->deferred;
  pe->deferred = nullptr;
  // The call raised the interrupt itself (a wait in it was woken by the cancel): nothing more.
  const bool raised_interrupt = !r && (PyErr_ExceptionMatches(CancelledError) || PyErr_ExceptionMatches(TimeoutErrorType) ||
                                       PyErr_ExceptionMatches(InterruptedType));
  if (pending && !raised_interrupt) {
    ensure_unraisablehook();
    if (raise_in_fiber(ts, pending)) pe->interrupt_sent = 1;
  }
  Py_XDECREF(stashed);
  return r;
}

PyObject* g_acquire_name = nullptr;
PyObject* g_release_name = nullptr;

// __enter__(self): self.acquire(), then self.
PyObject* raw_deferring_enter(PyObject*, PyObject* self) {
  PyObject* r = call_deferring(self, g_acquire_name);
  if (!r) return nullptr;
  Py_DECREF(r);
  return Py_NewRef(self);
}

// __exit__(self, *exc_info): self.release().
PyObject* raw_deferring_exit(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n < 1) {
    PyErr_SetString(PyExc_TypeError, "__exit__ needs self");
    return nullptr;
  }
  PyObject* r = call_deferring(a[0], g_release_name);
  if (!r) return nullptr;
  Py_DECREF(r);
  Py_RETURN_NONE;
}

PyMethodDef deferring_enter_def = {"__enter__", &raw_deferring_enter, METH_O,
                                   "acquire(); returns self (interrupts of the body deferred to the end)"};
PyMethodDef deferring_exit_def = {
    "__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_deferring_exit)), METH_FASTCALL,
    "release() (interrupts of the body deferred to the end)"};

// _interrupt_of_this_body(exc_type) -> bool: is `exc_type` the interruption (cancel, timeout) of the
// body running here, its execution ended and not shielded (distaff._errors' logging pass-through).
PyObject* raw_interrupt_of_this_body(PyObject*, PyObject* exc_type) {
  return PyBool_FromLong(interrupt_of_this_body(exc_type));
}

PyMethodDef cancel_functions[] = {
    {"_interrupt_of_this_body", &raw_interrupt_of_this_body, METH_O,
     "_interrupt_of_this_body(exc_type) -> bool: the interruption of the body running here"},
    {"arm_timeout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_arm_timeout)), METH_FASTCALL,
     "arm_timeout(execution, seconds)"},
    {"stop_timer", &raw_stop_timer, METH_NOARGS, "stop_timer(): join the timeout thread"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_cancel(PyObject* module) {
  if (PyModule_AddFunctions(module, cancel_functions) < 0) return false;
  if (!g_acquire_name && !(g_acquire_name = PyUnicode_InternFromString("acquire"))) return false;
  if (!g_release_name && !(g_release_name = PyUnicode_InternFromString("release"))) return false;
  // Bound as methods (instancemethod): the class attributes __enter__/__exit__ of distaff's Lock and
  // Semaphore (_sync.py).
  for (PyMethodDef* def : {&deferring_enter_def, &deferring_exit_def}) {
    PyObject* f = PyCFunction_New(def, nullptr);
    PyObject* m = f ? PyInstanceMethod_New(f) : nullptr;
    Py_XDECREF(f);
    const char* attr = def == &deferring_enter_def ? "deferring_enter" : "deferring_exit";
    if (!m || PyModule_AddObject(module, attr, m) < 0) {
      Py_XDECREF(m);
      return false;
    }
  }
  return true;
}

}  // namespace distaff::py
