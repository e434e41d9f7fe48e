// The Python Execution type and the raw (METH_FASTCALL) entry points.
//
// Everything here that can suspend a fiber — result(), exception(), shutdown(), the waits — is a raw
// CPython function, never a pybind11 def: pybind11 keeps a per-OS-thread stack of in-flight calls
// that a suspended fiber would leave out of order (python_fiber.hpp, rule 4). Raw calls are also
// about 3x cheaper, which matters on submit and result.

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include "bindings.hpp"

#include <structmember.h>

#include "distaff/timer.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

PyTypeObject* ExecutionType = nullptr;

namespace {
// The execution whose async def body runs in the current asyncio task (set by the facade's
// _cancellable on the loop): current_execution() and the parent of what that body submits.
PyObject* g_async_current = nullptr;

Execution* async_current() {
  PyObject* v = nullptr;
  if (!g_async_current || PyContextVar_Get(g_async_current, nullptr, &v) < 0) {
    PyErr_Clear();
    return nullptr;
  }
  if (!v) return nullptr;
  Execution* e = Py_TYPE(v) == ExecutionType ? reinterpret_cast<PyExecution*>(v)->core : nullptr;
  Py_DECREF(v);  // the context keeps it alive while it is the value
  return e;
}

// The parent a done-callback's submissions get: the execution whose code registered the callback
// (or none), not whichever fiber happened to finish the execution. One entry per callback running
// now, keyed by the thread state it runs on (a callback may suspend its fiber, and other fibers of
// the worker must not inherit its override). GIL held; almost always empty.
std::vector<std::pair<PyThreadState*, Execution*>> g_callback_parents;

// handout: the exception of failed `pe` is about to reach the code running here.
void handout(PyExecution* pe) {
  if (!pe->exc) return;
  Execution* r = current_execution();
  if (!r) r = async_current();
  if (r && r != pe->core) note_handout(pe->exc, r->id());
}

// await_handout: a core callback registered by `await ex` in a body (arg: the awaiting execution's
// id); the exception reaches that body if `ex` fails.
void await_handout(Execution& e, void* arg) {
  auto* pe = static_cast<PyExecution*>(e.payload());
  if (pe && e.state() == State::failed && pe->exc) {
    note_handout(pe->exc, static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(arg)));
  }
}
static_assert(sizeof(void*) >= sizeof(std::uint64_t), "execution ids travel in a callback's void*");

// submit_parent: the parent of an execution submitted here.
Execution* submit_parent() {
  if (!g_callback_parents.empty()) {
    PyThreadState* ts = PyThreadState_Get();
    for (std::size_t i = g_callback_parents.size(); i-- > 0;) {
      if (g_callback_parents[i].first == ts) return g_callback_parents[i].second;
    }
  }
  Execution* p = current_execution();
  return p ? p : async_current();
}
}  // namespace
unsigned g_fork_generation = 0;

namespace {

PyObject* g_callback_error_hook = nullptr;  // distaff._errors.log_callback_error
PyObject* g_loop_wait_hook = nullptr;       // distaff._asyncio.wait_on_loop_thread
unsigned long g_main_thread_ident = 0;

inline PyExecution* as_pe(PyObject* o) { return reinterpret_cast<PyExecution*>(o); }

// ---- waiting ------------------------------------------------------------------------------------

enum WaitOutcome { kDone = 0, kTimeout = 1, kInterrupted = 2, kError = -1, kSignal = -2 };

}  // namespace

bool on_main_thread() {
  return current_execution() == nullptr && PyThread_get_thread_ident() == g_main_thread_ident;
}

bool parse_seconds(PyObject* v, const char* what, Seconds kind, double& out) {
  const bool none_ok = kind == Seconds::wait || kind == Seconds::option || kind == Seconds::cap;
  if (v == Py_None && none_ok) {
    out = std::numeric_limits<double>::infinity();
    return true;
  }
  const char* expected = kind == Seconds::factor ? "a number" : "a number of seconds";
  PyNumberMethods* nb = Py_TYPE(v)->tp_as_number;
  if (PyBool_Check(v) || !(PyFloat_Check(v) || PyLong_Check(v) || (nb && (nb->nb_float || nb->nb_index)))) {
    PyErr_Format(PyExc_TypeError, "%s must be %s%s, not %.100s", what, expected, none_ok ? " or None" : "",
                 Py_TYPE(v)->tp_name);
    return false;
  }
  double t = PyFloat_AsDouble(v);
  if (t == -1.0 && PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;  // __float__ itself raised
    // An integer too large for a float (10**400): as large as a float gets, with its sign.
    PyErr_Clear();
    PyObject* zero = PyLong_FromLong(0);
    const int negative = zero ? PyObject_RichCompareBool(v, zero, Py_LT) : -1;
    Py_XDECREF(zero);
    if (negative < 0) return false;
    t = negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  }
  if (std::isnan(t)) {
    PyErr_Format(PyExc_ValueError, "%s must not be NaN", what);
    return false;
  }
  switch (kind) {
    case Seconds::wait:  // like concurrent.futures: a wait whose timeout already passed
      if (t < 0) t = 0;
      break;
    case Seconds::option:
      if (!(t > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a positive number of seconds or None, not %R", what, v);
        return false;
      }
      break;
    case Seconds::length:
    case Seconds::cap:
      if (t < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative number of seconds, not %R", what, v);
        return false;
      }
      break;
    case Seconds::delay:
    case Seconds::factor:
      if (t < 0 || std::isinf(t)) {
        PyErr_Format(PyExc_ValueError, "%s must be a finite non-negative number, not %R", what, v);
        return false;
      }
      break;
  }
  out = t;
  return true;
}

Clock::time_point deadline_after(double seconds) {
  // 1e9 s (~31 years) and beyond — inf included — is no deadline; it also keeps the sum in range.
  if (!(seconds < kNoLimitSeconds)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

bool parse_timeout(PyObject* timeout, Clock::time_point& deadline) {
  deadline = Clock::time_point::max();
  if (!timeout || timeout == Py_None) return true;
  double t;
  if (!parse_seconds(timeout, "timeout", Seconds::wait, t)) return false;
  deadline = deadline_after(t);
  return true;
}

namespace {

}  // namespace

void raise_interrupted() {
  // The execution was cancelled or timed out while parked. terminate() may also have queued an
  // asynchronous exception for it; it is moot now, and would fire again in the handler: drop it.
  PyThreadState* ts = PyThreadState_Get();
  Py_CLEAR(ts->async_exc);
  Execution* self = current_execution();
  PyExecution* pe = self ? static_cast<PyExecution*>(self->payload()) : nullptr;
  if (pe && pe->core->state() == State::failed && pe->exc && PyErr_GivenExceptionMatches(pe->exc, TimeoutErrorType)) {
    PyErr_SetString(TimeoutErrorType, "the execution timed out");
  } else {
    PyErr_SetString(CancelledError, "the execution was cancelled");
  }
}

namespace {

// wait_core: waits for `target` as the calling context requires. A worker fiber suspends; the main
// thread parks in short slices so Ctrl-C (PyErr_CheckSignals) is honoured; other threads just park.
// The GIL is released while parked (switch hooks).
int wait_core(Execution* target, Clock::time_point deadline) {
  if (target->done()) return kDone;
  bool interrupted = false;
  int r = wait_sliced(
      [&](Clock::time_point d) {
        WaitStatus st = target->wait_until(d);
        interrupted = st == WaitStatus::interrupted;
        return st != WaitStatus::timeout;
      },
      deadline);
  if (r == -2) return kSignal;
  if (r < 0) return kError;
  if (r == 1) return kTimeout;
  // Woken because the target finished — but if the waiter itself was cancelled or timed out
  // meanwhile (terminate() also cancels the target when it is a child), that is what it must see.
  Execution* self = current_execution();
  if (interrupted || (self && self->interrupted())) return kInterrupted;
  return kDone;
}

int wait_for_outcome(PyExecution* pe, PyObject* timeout) {
  if (pe->fork_generation != g_fork_generation && !pe->core->done()) {
    PyErr_Format(ShutdownError,
                 "execution %llu (%s) was unfinished when this process was forked; it can never finish here",
                 static_cast<unsigned long long>(pe->core->id()), pe->core->name().c_str());
    return kError;
  }
  Clock::time_point deadline;
  if (!parse_timeout(timeout, deadline)) return kError;
  int r = wait_core(pe->core, deadline);
  if (r == kSignal) {
    // A signal handler raised (Ctrl-C) while the main thread waited for this execution: like
    // asyncio.run cancelling its main task, the execution is cancelled with its tree, so the
    // interrupted program does not leave it running (nor the exit waiting for it). Only a wait that
    // a signal ended does this; a timeout that expired leaves the execution running.
    PyObject* exc = fetch_exception();
    terminate(pe, State::cancelled, nullptr, CancelledError);
    if (PyErr_Occurred()) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(pe));
    if (!exc) {  // (a signal handler's failure always carries an exception; kept safe all the same)
      PyErr_SetString(InternalError, "a signal interrupted the wait without an exception");
      return kError;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(exc))), exc, PyException_GetTraceback(exc));
#endif
    return kError;
  }
  if (r == kTimeout) {
    PyErr_Format(PyExc_TimeoutError, "execution %llu (%s) did not finish within the timeout",
                 static_cast<unsigned long long>(pe->core->id()), pe->core->name().c_str());
  } else if (r == kInterrupted) {
    raise_interrupted();
  }
  return r;
}

// wait_blocking: result()/exception() waiting for an unfinished execution. On a thread (not a fiber)
// the loop-wait hook runs first: on a thread running an asyncio event loop it refuses a wait only that
// loop could satisfy (DeadlockError) and otherwise waits itself, re-checking (returns True); it
// returns None when no loop runs in this thread (the plain wait below).
int wait_blocking(PyExecution* pe, PyObject* timeout) {
  // (An execution inherited across fork() skips the hook: wait_for_outcome raises ShutdownError.)
  if (g_loop_wait_hook && !current_execution() && pe->fork_generation == g_fork_generation) {
    PyObject* r = PyObject_CallFunctionObjArgs(g_loop_wait_hook, reinterpret_cast<PyObject*>(pe), timeout, nullptr);
    if (!r) return kError;
    const bool handled = r != Py_None;
    Py_DECREF(r);
    if (handled) return kDone;
  }
  return wait_for_outcome(pe, timeout);
}

PyObject* cancelled_error(PyExecution* pe) {
  PyErr_Format(CancelledError, "execution %llu (%s) was cancelled",
               static_cast<unsigned long long>(pe->core->id()), pe->core->name().c_str());
  return nullptr;
}

// ---- the type -------------------------------------------------------------------------------------

int pe_traverse(PyObject* self, visitproc visit, void* arg) {
  PyExecution* pe = as_pe(self);
  Py_VISIT(pe->engine);
  Py_VISIT(pe->fn);
  Py_VISIT(pe->args);
  Py_VISIT(pe->kwargs);
  Py_VISIT(pe->context);
  Py_VISIT(pe->trace);
  Py_VISIT(pe->result);
  Py_VISIT(pe->exc);
  Py_VISIT(pe->callbacks);
  Py_VISIT(pe->workflow_id);
  Py_VISIT(pe->deps);
  Py_VISIT(pe->extra);
  return 0;
}

int pe_clear(PyObject* self) {
  PyExecution* pe = as_pe(self);
  Py_CLEAR(pe->fn);
  Py_CLEAR(pe->args);
  Py_CLEAR(pe->kwargs);
  Py_CLEAR(pe->context);
  Py_CLEAR(pe->trace);
  Py_CLEAR(pe->result);
  Py_CLEAR(pe->exc);
  Py_CLEAR(pe->callbacks);
  Py_CLEAR(pe->workflow_id);
  Py_CLEAR(pe->deps);
  Py_CLEAR(pe->extra);
  Py_CLEAR(pe->engine);
  return 0;
}

// Unobserved failures are logged at a safe point, not inside the finalizer: a finalizer can run in
// the middle of anything (measured: during ast.parse, where formatting a traceback re-entered the
// parser and CPython 3.11 raised "AST constructor recursion depth mismatch"). Finalizers queue
// (id, name, exception); a pending call (the main thread's next safe point) logs the batch.
PyObject* g_unobserved = nullptr;  // list of (id, name, exc), or NULL

// report_at_finalization: once the interpreter finalizes, modules (logging among them) are being
// torn down and a pending call may never run: the failure is written to stderr from C instead.
void report_at_finalization(std::uint64_t id, const char* name, PyObject* exc) {
  PyObject* text = PyObject_Str(exc);
  const char* msg = text ? PyUnicode_AsUTF8(text) : nullptr;
  if (!msg) PyErr_Clear();
  std::fprintf(stderr, "distaff: execution %llu (%s) failed and nobody retrieved its error: %s: %s\n",
               static_cast<unsigned long long>(id), name, Py_TYPE(exc)->tp_name, msg ? msg : "?");
  Py_XDECREF(text);
}

int drain_unobserved(void*) {
  PyObject* batch = g_unobserved;
  g_unobserved = nullptr;
  if (!batch) return 0;
  if (interpreter_finalizing()) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); ++i) {
      PyObject* item = PyList_GET_ITEM(batch, i);
      report_at_finalization(PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 0)),
                             PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 1)), PyTuple_GET_ITEM(item, 2));
    }
    Py_DECREF(batch);
    return 0;
  }
  PyObject* r = UnobservedHook ? PyObject_CallOneArg(UnobservedHook, batch) : nullptr;
  Py_DECREF(batch);
  if (r) {
    Py_DECREF(r);
  } else {
    PyErr_WriteUnraisable(UnobservedHook);
  }
  return 0;
}

void pe_finalize(PyObject* self) {
  PyExecution* pe = as_pe(self);
  if (!pe->core || pe->observed || !pe->exc || pe->core->state() != State::failed) return;
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* saved = PyErr_GetRaisedException();
#else
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
#endif
  if (interpreter_finalizing()) {
    report_at_finalization(pe->core->id(), pe->core->name().c_str(), pe->exc);
  } else {
    const bool first = g_unobserved == nullptr;
    if (first) g_unobserved = PyList_New(0);
    PyObject* item = g_unobserved ? Py_BuildValue("(KsO)", static_cast<unsigned long long>(pe->core->id()),
                                                  pe->core->name().c_str(), pe->exc)
                                  : nullptr;
    if (!item || PyList_Append(g_unobserved, item) < 0) PyErr_Clear();
    Py_XDECREF(item);
    if (first && g_unobserved && Py_AddPendingCall(&drain_unobserved, nullptr) < 0) PyErr_Clear();
  }
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(saved);
#else
  PyErr_Restore(t, v, tb);
#endif
}

void pe_dealloc(PyObject* self) {
  if (PyObject_CallFinalizerFromDealloc(self) < 0) return;  // resurrected
  PyExecution* pe = as_pe(self);
  if (PyObject_GC_IsTracked(self)) PyObject_GC_UnTrack(self);
  if (pe->weakrefs) PyObject_ClearWeakRefs(self);
  pe_clear(self);
  if (pe->core) {
    pe->core->set_payload(nullptr);
    pe->core->release();
    pe->core = nullptr;
  }
  Py_TYPE(self)->tp_free(self);
}

PyObject* pe_repr(PyObject* self) {
  PyExecution* pe = as_pe(self);
  return PyUnicode_FromFormat("<Execution %llu %s %s>", static_cast<unsigned long long>(pe->core->id()),
                              pe->core->name().c_str(), to_string(pe->core->state()));
}

// ---- methods ----------------------------------------------------------------------------------------

bool parse_timeout_arg(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                       PyObject** timeout) {
  *timeout = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs + nkw > 1) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (timeout)", fname);
    return false;
  }
  if (nargs == 1) *timeout = args[0];
  if (nkw == 1) {
    if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                   PyTuple_GET_ITEM(kwnames, 0));
      return false;
    }
    *timeout = args[0];
  }
  return true;
}

PyObject* pe_result(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  PyExecution* pe = as_pe(self);
  PyObject* timeout;
  if (!parse_timeout_arg("result", args, nargs, kwnames, &timeout)) return nullptr;
  if (!pe->core->done()) {
    if (wait_blocking(pe, timeout) != kDone) return nullptr;
  } else if (timeout != Py_None) {  // bad input fails the same whether or not it is done
    Clock::time_point unused;
    if (!parse_timeout(timeout, unused)) return nullptr;
  }
  switch (pe->core->state()) {
    case State::succeeded:
      return Py_NewRef(pe->result ? pe->result : Py_None);
    case State::failed:
      pe->observed = 1;
      if (!pe->exc) {
        PyErr_SetString(InternalError, "failed execution without an exception");
        return nullptr;
      }
      handout(pe);
      return raise_stored(pe->exc);
    case State::cancelled:
      return cancelled_error(pe);
    default:
      PyErr_SetString(InternalError, "woken before the execution finished");
      return nullptr;
  }
}

PyObject* pe_exception(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  PyExecution* pe = as_pe(self);
  PyObject* timeout;
  if (!parse_timeout_arg("exception", args, nargs, kwnames, &timeout)) return nullptr;
  if (!pe->core->done()) {
    if (wait_blocking(pe, timeout) != kDone) return nullptr;
  } else if (timeout != Py_None) {  // bad input fails the same whether or not it is done
    Clock::time_point unused;
    if (!parse_timeout(timeout, unused)) return nullptr;
  }
  State s = pe->core->state();
  if (s == State::cancelled) return cancelled_error(pe);
  if (s == State::failed && pe->exc) {
    pe->observed = 1;
    handout(pe);
    return Py_NewRef(pe->exc);
  }
  Py_RETURN_NONE;
}

PyObject* pe_done(PyObject* self, PyObject*) { return PyBool_FromLong(as_pe(self)->core->done()); }

PyObject* pe_cancelled(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_pe(self)->core->state() == State::cancelled);
}

PyObject* pe_running(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_pe(self)->core->state() == State::running);
}

PyObject* pe_cancel(PyObject* self, PyObject*) {
  PyExecution* pe = as_pe(self);
  if (pe->core->state() == State::cancelled) Py_RETURN_TRUE;
  if (pe->core->done()) Py_RETURN_FALSE;
  // Unlike concurrent.futures, a running execution is cancelled too: it finishes as cancelled now,
  // its body is interrupted (at its next wait, or its next bytecode) and its children cancelled.
  terminate(pe, State::cancelled, nullptr, CancelledError);
  return PyBool_FromLong(pe->core->state() == State::cancelled);
}

PyObject* pe_annotate(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  PyExecution* pe = as_pe(self);
  if (n != 2 || !PyUnicode_Check(a[0])) {
    PyErr_SetString(PyExc_TypeError, "_annotate(key, value)");
    return nullptr;
  }
  track(pe);
  if (!pe->extra && !(pe->extra = PyDict_New())) return nullptr;
  if (PyDict_SetItem(pe->extra, a[0], a[1]) < 0) return nullptr;
  Py_RETURN_NONE;
}

void call_callback(PyObject* cb, PyObject* self) {
  PyObject* r = PyObject_CallOneArg(cb, self);
  if (r) {
    Py_DECREF(r);
    return;
  }
  // Like concurrent.futures: a failing callback is logged (logger "distaff"), never propagated.
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* exc = PyErr_GetRaisedException();
#else
  PyObject *t, *exc, *tb;
  PyErr_Fetch(&t, &exc, &tb);
  PyErr_NormalizeException(&t, &exc, &tb);
  if (tb) PyException_SetTraceback(exc, tb);
  Py_XDECREF(t);
  Py_XDECREF(tb);
#endif
  if (g_callback_error_hook && exc) {
    PyObject* lr = PyObject_CallFunctionObjArgs(g_callback_error_hook, cb, self, exc, nullptr);
    if (lr) {
      Py_DECREF(lr);
    } else {
      PyErr_WriteUnraisable(cb);
    }
  }
  Py_XDECREF(exc);
}

// run_callback: runs one registered done-callback as the code that registered it: in (a copy of)
// its contextvars context — so a workflow scope follows, as it does for submit() — and with its
// execution (or none) as the parent of what the callback submits. An entry is the callable itself
// (registered outside any execution, in an empty context) or a tuple (fn, parent or None,
// context or None).
void run_callback(PyObject* entry, PyObject* self) {
  PyObject* fn = entry;
  PyObject* parent = nullptr;
  PyObject* ctx = nullptr;
  if (PyTuple_CheckExact(entry)) {
    fn = PyTuple_GET_ITEM(entry, 0);
    parent = PyTuple_GET_ITEM(entry, 1) == Py_None ? nullptr : PyTuple_GET_ITEM(entry, 1);
    ctx = PyTuple_GET_ITEM(entry, 2) == Py_None ? nullptr : PyTuple_GET_ITEM(entry, 2);
  }
  PyThreadState* ts = PyThreadState_Get();
  PyObject* made = nullptr;
  // Registered in an empty context: run in an empty one, not in the finishing body's.
  if (!ctx && ts->context && PyObject_Size(ts->context) > 0) ctx = made = PyContext_New();
  if (!ctx) PyErr_Clear();
  if (ctx && PyContext_Enter(ctx) < 0) {
    PyErr_Clear();  // a context entered elsewhere: run the callback where we are rather than not at all
    ctx = nullptr;
  }
  g_callback_parents.emplace_back(ts, parent ? as_pe(parent)->core : nullptr);
  call_callback(fn, self);
  // Not pop_back: a callback that suspended its fiber may finish after one that started later on
  // another fiber. Per thread state the entries nest, so the last one of this state is ours.
  for (std::size_t i = g_callback_parents.size(); i-- > 0;) {
    if (g_callback_parents[i].first == ts) {
      g_callback_parents.erase(g_callback_parents.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  if (ctx && PyContext_Exit(ctx) < 0) PyErr_Clear();
  Py_XDECREF(made);
}

PyObject* pe_add_done_callback(PyObject* self, PyObject* fn) {
  PyExecution* pe = as_pe(self);
  if (!PyCallable_Check(fn)) {
    PyErr_Format(PyExc_TypeError, "add_done_callback() needs a callable, not %.100s", Py_TYPE(fn)->tp_name);
    return nullptr;
  }
  if (pe->core->done()) {  // runs now, here: the registering code's parent and context already apply
    track(pe);
    call_callback(fn, self);
    Py_RETURN_NONE;
  }
  // Remember who registered it (docs/concepts.md, "Executions"): the current execution, as the
  // parent of what the callback submits, and a copy of the contextvars context (none if empty).
  PyObject* entry = fn;
  Execution* reg = submit_parent();
  PyThreadState* ts = PyThreadState_Get();
  const bool has_ctx = ts->context && PyObject_Size(ts->context) > 0;
  if (reg || has_ctx) {
    PyObject* reg_pe = reg && reg->payload() ? static_cast<PyObject*>(reg->payload()) : Py_None;
    PyObject* ctx = has_ctx ? PyContext_CopyCurrent() : Py_NewRef(Py_None);
    if (!ctx) return nullptr;
    entry = PyTuple_Pack(3, fn, reg_pe, ctx);
    Py_DECREF(ctx);
    if (!entry) return nullptr;
  } else {
    Py_INCREF(entry);
  }
  // Allocate before checking done(): allocating a list can run the cyclic GC, whose finalizers
  // can release the GIL and let the execution complete in between — a callback appended after
  // that check would never run. From the check to the append nothing allocates a GC object.
  if (!pe->core->done() && !pe->callbacks) {
    PyObject* list = PyList_New(0);
    if (!list) {
      Py_DECREF(entry);
      return nullptr;
    }
    if (pe->callbacks) {
      Py_DECREF(list);
    } else {
      pe->callbacks = list;
    }
  }
  track(pe);
  if (pe->core->done()) {  // finished meanwhile (the allocations above can run the GC)
    Py_DECREF(entry);
    call_callback(fn, self);
    Py_RETURN_NONE;
  }
  const int r = PyList_Append(pe->callbacks, entry);
  Py_DECREF(entry);
  if (r < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* pe_remove_done_callback(PyObject* self, PyObject* fn) {
  // Like asyncio.Future.remove_done_callback: removes every registration equal to fn; returns how
  // many. An awaiter that gave up (a cancelled asyncio task) takes its callback back with this.
  PyExecution* pe = as_pe(self);
  PyObject* cbs = pe->callbacks;
  if (!cbs) return PyLong_FromLong(0);
  Py_INCREF(cbs);  // comparisons can run Python code
  Py_ssize_t removed = 0;
  for (Py_ssize_t i = PyList_GET_SIZE(cbs) - 1; i >= 0; --i) {
    if (i >= PyList_GET_SIZE(cbs)) continue;
    PyObject* item = Py_NewRef(PyList_GET_ITEM(cbs, i));
    // An entry is the callable, or (callable, registering execution, context): add_done_callback.
    PyObject* cand = PyTuple_CheckExact(item) ? PyTuple_GET_ITEM(item, 0) : item;
    int eq = cand == fn ? 1 : PyObject_RichCompareBool(cand, fn, Py_EQ);
    Py_DECREF(item);
    if (eq < 0) {
      Py_DECREF(cbs);
      return nullptr;
    }
    if (eq && i < PyList_GET_SIZE(cbs) && PyList_SetSlice(cbs, i, i + 1, nullptr) == 0) ++removed;
  }
  Py_DECREF(cbs);
  return PyLong_FromSsize_t(removed);
}

PyObject* ns_to_seconds(std::int64_t ns) {
  if (ns == 0) Py_RETURN_NONE;
  return PyFloat_FromDouble(static_cast<double>(ns) / 1e9);
}

PyObject* pe_description(PyObject* self, void*) {
  PyExecution* pe = as_pe(self);
  Execution* c = pe->core;
  PyObject* deps = PyList_New(0);
  if (!deps) return nullptr;
  for (std::uint64_t id : c->dependency_ids()) {
    PyObject* v = PyLong_FromUnsignedLongLong(id);
    if (!v || PyList_Append(deps, v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(deps);
      return nullptr;
    }
    Py_DECREF(v);
  }
  PyObject* parent = c->parent_id() ? PyLong_FromUnsignedLongLong(c->parent_id()) : Py_NewRef(Py_None);
  PyObject* blocked = c->blocked_on() ? PyLong_FromUnsignedLongLong(c->blocked_on()) : Py_NewRef(Py_None);
  PyObject* d = Py_BuildValue(
      "{s:K,s:s,s:s,s:N,s:s,s:N,s:N,s:N,s:O,s:N,s:N}", "id", static_cast<unsigned long long>(c->id()),
      "name", c->name().c_str(), "kind", to_string(c->kind()), "parent_id", parent, "state",
      to_string(c->state()), "submitted", ns_to_seconds(c->submitted_ns()), "started",
      ns_to_seconds(c->started_ns()), "finished", ns_to_seconds(c->finished_ns()), "workflow_id",
      pe->workflow_id ? pe->workflow_id : Py_None, "dependencies", deps, "blocked_on", blocked);
  if (d && pe->extra && PyDict_Update(d, pe->extra) < 0) Py_CLEAR(d);
  return d;
}

PyObject* pe_id(PyObject* self, void*) { return PyLong_FromUnsignedLongLong(as_pe(self)->core->id()); }
PyObject* pe_name(PyObject* self, void*) {
  const std::string& name = as_pe(self)->core->name();
  return PyUnicode_FromStringAndSize(name.data(), static_cast<Py_ssize_t>(name.size()));
}
PyObject* pe_state(PyObject* self, void*) { return PyUnicode_FromString(to_string(as_pe(self)->core->state())); }
PyObject* pe_workflow_id(PyObject* self, void*) {
  PyExecution* pe = as_pe(self);
  return Py_NewRef(pe->workflow_id ? pe->workflow_id : Py_None);
}
PyObject* pe_parent_id(PyObject* self, void*) {
  std::uint64_t p = as_pe(self)->core->parent_id();
  if (!p) Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(p);
}

PyObject* pe_await(PyObject* self) {
  if (!AsyncAwaitHook) {
    PyErr_SetString(PyExc_RuntimeError, "distaff's asyncio bridge is not initialised");
    return nullptr;
  }
  // An async body awaiting `self`: if it fails, its exception reaches that body (see handout()).
  Execution* receiver = current_execution();
  if (!receiver) receiver = async_current();
  if (receiver && receiver != as_pe(self)->core) {
    as_pe(self)->core->add_callback(&await_handout,
                                    reinterpret_cast<void*>(static_cast<std::uintptr_t>(receiver->id())));
  }
  return PyObject_CallOneArg(AsyncAwaitHook, self);
}

PyMethodDef pe_methods[] = {
    {"result", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&pe_result)),
     METH_FASTCALL | METH_KEYWORDS,
     "result(timeout=None)\n--\n\nThe body's return value; re-raises its exception. Suspends a fiber, "
     "blocks a thread (Ctrl-C still works). TimeoutError when the timeout expires."},
    {"exception", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&pe_exception)),
     METH_FASTCALL | METH_KEYWORDS,
     "exception(timeout=None)\n--\n\nThe exception the body raised, or None. Waits like result()."},
    {"done", &pe_done, METH_NOARGS, "done()\n--\n\nTrue once the execution is finished (any outcome)."},
    {"cancelled", &pe_cancelled, METH_NOARGS, "cancelled()\n--\n\nTrue if the execution was cancelled."},
    {"running", &pe_running, METH_NOARGS, "running()\n--\n\nTrue while the body runs (or is suspended)."},
    {"cancel", &pe_cancel, METH_NOARGS,
     "cancel()\n--\n\nCancels the execution and its children (not detached ones). A running body is "
     "interrupted at its next wait or bytecode. True if it is (now) cancelled."},
    {"_annotate", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&pe_annotate)), METH_FASTCALL,
     "_annotate(key, value): facade metadata shown in description."},
    {"add_done_callback", &pe_add_done_callback, METH_O,
     "add_done_callback(fn)\n--\n\nCalls fn(execution) once finished (now, if it already is)."},
    {"remove_done_callback", &pe_remove_done_callback, METH_O,
     "remove_done_callback(fn)\n--\n\nRemoves every registration of fn not yet called; returns how many."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef pe_getset[] = {
    {"id", &pe_id, nullptr, "Process-unique id.", nullptr},
    {"name", &pe_name, nullptr, "The task's name.", nullptr},
    {"state", &pe_state, nullptr, "pending, waiting, running, succeeded, failed or cancelled.", nullptr},
    {"workflow_id", &pe_workflow_id, nullptr, "The workflow id this execution is tagged with, or None.", nullptr},
    {"parent_id", &pe_parent_id, nullptr, "Id of the execution whose body submitted this one, or None.", nullptr},
    {"description", &pe_description, nullptr, "A dict describing the execution.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMemberDef pe_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PyExecution, weakrefs), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot pe_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(&pe_dealloc)},
    {Py_tp_finalize, reinterpret_cast<void*>(&pe_finalize)},
    {Py_tp_traverse, reinterpret_cast<void*>(&pe_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(&pe_clear)},
    {Py_tp_repr, reinterpret_cast<void*>(&pe_repr)},
    {Py_tp_methods, pe_methods},
    {Py_tp_getset, pe_getset},
    {Py_tp_members, pe_members},
    {Py_am_await, reinterpret_cast<void*>(&pe_await)},
    {Py_tp_doc, const_cast<char*>("A submitted call of a task: a future-like handle, awaitable in asyncio.")},
    {0, nullptr}};

PyType_Spec pe_spec = {"distaff.Execution", sizeof(PyExecution), 0,
                       Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION, pe_slots};

// ---- running bodies -----------------------------------------------------------------------------

void forward_done(Execution& target_core, void* arg);
void forward(PyExecution* pe, PyExecution* target);

// The forwarding list: every execution of an engine whose body returned and which now follows
// another execution (an async body's execution follows its promise until the coroutine ends).
// Linked by forward(), unlinked by forward_done() (the forward holds a reference meanwhile), GIL
// held. It reuses run_prev/run_next: a body is unlinked from the running list before it forwards.
PyExecution* g_forwarding = nullptr;

// An intrusive list over run_prev/run_next (the running and the forwarding lists), GIL held.
void list_link(PyExecution*& head, PyExecution* pe) {
  pe->run_prev = nullptr;
  pe->run_next = head;
  if (head) head->run_prev = pe;
  head = pe;
}

void list_unlink(PyExecution*& head, PyExecution* pe) {
  if (pe->run_prev) {
    pe->run_prev->run_next = pe->run_next;
  } else if (head == pe) {
    head = pe->run_next;
  } else {
    return;  // not linked (linked before a fork: the lists were reset)
  }
  if (pe->run_next) pe->run_next->run_prev = pe->run_prev;
  pe->run_prev = pe->run_next = nullptr;
}

void link_forwarding(PyExecution* pe) { list_link(g_forwarding, pe); }
void unlink_forwarding(PyExecution* pe) { list_unlink(g_forwarding, pe); }

}  // namespace

void forward_execution(PyExecution* pe, PyExecution* target) {
  Py_INCREF(pe);  // the forward's reference
  forward(pe, target);
}

PyObject* fetch_exception() {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
  PyErr_NormalizeException(&t, &v, &tb);
  if (tb) PyException_SetTraceback(v, tb);
  Py_XDECREF(t);
  Py_XDECREF(tb);
  return v;
#endif
}

namespace {

// forward: `pe`'s body returned `target`; pe completes when target does. Takes one reference to pe.
void forward(PyExecution* pe, PyExecution* target) {
  try {
    pe->core->forward_to(*target->core);
  } catch (...) {
    translate_current_exception();
    complete(pe, State::failed, fetch_exception());
    Py_DECREF(pe);
    return;
  }
  pe->forwarding = 1;
  track(pe);
  Py_XSETREF(pe->result, Py_NewRef(reinterpret_cast<PyObject*>(target)));
  if (pe->engine) link_forwarding(pe);  // cancel_running reaches it (an async body's execution)
  target->core->add_callback(&forward_done, pe);
}

void forward_done(Execution& target_core, void* arg) {
  auto* pe = static_cast<PyExecution*>(arg);
  PyObject* t = pe->result;
  pe->result = nullptr;
  pe->forwarding = 0;
  if (pe->engine) unlink_forwarding(pe);
  PyExecution* target = as_pe(t);
  switch (target_core.state()) {
    case State::succeeded:
      complete(pe, State::succeeded, Py_NewRef(target->result ? target->result : Py_None));
      break;
    case State::failed:
      target->observed = 1;
      complete(pe, State::failed, target->exc ? Py_NewRef(target->exc) : nullptr);
      break;
    default:
      complete(pe, State::cancelled, nullptr);
  }
  Py_DECREF(t);
  Py_DECREF(pe);
}

}  // namespace

void EngineCore::remember(const ExecutionRef& ex, std::unique_ptr<HistoryExtra> extra) {
  if (history_limit == 0) return;
  std::unique_ptr<HistoryExtra> old;  // freed after the lock is released
  std::lock_guard<std::mutex> g(history_mu);
  if (history.size() < history_limit) {
    history.push_back(HistoryEntry{ex, std::move(extra)});
  } else {
    HistoryEntry& e = history[history_head];
    e.ex = ex;
    old = std::move(e.extra);
    e.extra = std::move(extra);
    history_head = (history_head + 1) % history_limit;
  }
}

PyExecution* new_virtual_execution(const std::string& name, Kind kind) {
  PyExecution* pe = PyObject_GC_New(PyExecution, ExecutionType);
  if (!pe) return nullptr;
  ExecutionRef core = Execution::create(name, kind);
  core->start();
  if (Execution* parent = submit_parent()) core->set_parent_id(parent->id());
  pe->core = core.detach();
  pe->engine = nullptr;
  pe->fn = pe->args = pe->kwargs = pe->context = pe->trace = nullptr;
  pe->result = pe->exc = pe->callbacks = pe->workflow_id = pe->deps = pe->weakrefs = nullptr;
  pe->extra = nullptr;
  pe->tstate = nullptr;
  pe->run_prev = pe->run_next = nullptr;
  pe->timer_id = 0;
  pe->observed = 0;
  pe->forwarding = 0;
  pe->detached = 0;
  pe->late = 0;
  pe->fork_generation = g_fork_generation;
  pe->core->set_payload(pe);
  return pe;  // untracked until it holds something cyclic (see track())
}

EngineCore* engine_from_capsule(PyObject* capsule) {
  return static_cast<EngineCore*>(PyCapsule_GetPointer(capsule, "distaff.EngineCore"));
}

// ---- timeouts and termination ------------------------------------------------------------------

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

void timeout_fired(void* arg) {
  // On the timer thread: a plain OS thread, never a fiber, so PyGILState is the right API here.
  if (interpreter_finalizing()) return;
  PyGILState_STATE g = PyGILState_Ensure();
  auto* pe = static_cast<PyExecution*>(arg);
  pe->timer_id = 0;
  if (!pe->core->done()) {
    double secs = 0;
    if (pe->extra) {
      if (PyObject* t = PyDict_GetItemString(pe->extra, "timeout")) secs = PyFloat_AsDouble(t);
    }
    PyObject* exc = PyObject_CallFunction(TimeoutErrorType, "s",
        (std::string("execution ") + std::to_string(pe->core->id()) + " (" + pe->core->name() +
         ") was still running at its deadline (timeout=" + std::to_string(secs) + " s)").c_str());
    if (!exc) exc = fetch_exception();
    terminate(pe, State::failed, exc, TimeoutErrorType);
  }
  Py_DECREF(pe);  // the timer's reference
  PyGILState_Release(g);
}

}  // namespace

void disarm_timeout(PyExecution* pe) {
  std::uint64_t id = pe->timer_id;
  pe->timer_id = 0;
  if (g_timer && id && g_timer->cancel(id)) Py_DECREF(pe);  // the timer's reference
}

bool terminate(PyExecution* pe, State state, PyObject* value, PyObject* async_exc) {
  // Children are collected before completing: finishing an execution releases its child records.
  // Children and the parked status are read before completing: finishing an execution releases its
  // child records and its wait-graph edges.
  // The interrupt comes first too: a fiber woken by the completion must already see it.
  if (pe->core->done()) {
    Py_XDECREF(value);
    return false;
  }
  std::vector<ExecutionRef> kids = pe->core->children();
  bool parked = pe->core->parked();
  pe->core->interrupt();
  if (!complete(pe, state, value)) return false;
  if (pe->tstate && !parked) raise_in_fiber(pe->tstate, async_exc);
  // Then the same for the children, transitively and iteratively (trees can be deep).
  while (!kids.empty()) {
    ExecutionRef e = std::move(kids.back());
    kids.pop_back();
    auto* p = static_cast<PyExecution*>(e->payload());
    if (!p || p->detached) continue;
    if (e->done()) continue;
    std::vector<ExecutionRef> grandkids = e->children();
    parked = e->parked();
    e->interrupt();
    if (!complete(p, State::cancelled, nullptr)) continue;
    if (p->tstate && !parked) raise_in_fiber(p->tstate, CancelledError);
    for (ExecutionRef& c : grandkids) kids.push_back(std::move(c));
  }
  return true;
}

// What the history keeps of a finished execution besides its core record (which has the workflow
// id): for a failure "Type: message" (str() of the exception, cut to kErrorTextMax bytes). Null for
// an execution that did not fail: the common case allocates nothing. GIL held.
constexpr std::size_t kErrorTextMax = 500;

static std::unique_ptr<EngineCore::HistoryExtra> history_extra(PyExecution* pe) {
  const bool failed = pe->exc && pe->core->state() == State::failed;
  if (!failed) return nullptr;
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* saved = PyErr_GetRaisedException();
#else
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
#endif
  auto extra = std::make_unique<EngineCore::HistoryExtra>();
  if (failed) {
    const char* tp = Py_TYPE(pe->exc)->tp_name;
    if (const char* dot = std::strrchr(tp, '.')) tp = dot + 1;  // "numpy.linalg.LinAlgError": the name
    extra->error = tp;
    if (PyObject* text = PyObject_Str(pe->exc)) {  // the body's exception: its __str__ may run Python
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(text, &n);
      if (s && n > 0) {
        std::size_t len = static_cast<std::size_t>(n);
        if (len > kErrorTextMax) {
          len = kErrorTextMax;
          while (len > 0 && (static_cast<unsigned char>(s[len]) & 0xC0) == 0x80) --len;  // whole characters
        }
        extra->error.append(": ").append(s, len);
        if (len < static_cast<std::size_t>(n)) extra->error.append("...");
      }
      Py_DECREF(text);
    }
    PyErr_Clear();  // a failing __str__ leaves the type name alone
  }
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(saved);
#else
  PyErr_Restore(t, v, tb);
#endif
  return extra;
}

bool complete(PyExecution* pe, State state, PyObject* value) {
  Execution* c = pe->core;
  if (c->done()) {
    Py_XDECREF(value);
    return false;
  }
  // While the engine shuts down, children submitted late (see submit_impl) do not outlive their
  // parent: read them now, finishing releases the child records.
  std::vector<ExecutionRef> kids;
  EngineCore* eng = pe->engine ? engine_from_capsule(pe->engine) : nullptr;
  if (eng && eng->closing.load(std::memory_order_acquire)) kids = c->children();
  if (state == State::succeeded) {
    if (value && PyObject_IS_GC(value) && PyObject_GC_IsTracked(value)) track(pe);
    Py_XSETREF(pe->result, value);
  } else if (state == State::failed) {
    track(pe);
    if (!value) {
      PyErr_SetString(InternalError, "execution failed without an exception");
      value = fetch_exception();
    }
    Py_XSETREF(pe->exc, value);
  } else {
    Py_XDECREF(value);
  }
  const bool finished = state == State::cancelled ? c->cancel_if_not_started() || c->finish(State::cancelled)
                                                  : c->finish(state);
  if (!finished) return false;
  if (pe->timer_id) disarm_timeout(pe);
  if (eng && eng->history_limit) eng->remember(ExecutionRef(c), history_extra(pe));
  if (eng && eng->outcomes) record_outcome(eng, pe, state);
  if (PyObject* cbs = pe->callbacks) {
    pe->callbacks = nullptr;
    PyObject* self = reinterpret_cast<PyObject*>(pe);
    Py_INCREF(self);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cbs); ++i) run_callback(PyList_GET_ITEM(cbs, i), self);
    Py_DECREF(self);
    Py_DECREF(cbs);
  }
  for (ExecutionRef& k : kids) {
    auto* p = static_cast<PyExecution*>(k->payload());
    if (p && p->late && !p->detached && !k->done()) terminate(p, State::cancelled, nullptr, CancelledError);
  }
  return true;
}

namespace {
// The running list: every execution whose body is on a fiber now (cancel_running, Ctrl-C at exit).
// Linked and unlinked by the body's own fiber with the GIL held; read with the GIL held, so no lock.
PyExecution* g_running = nullptr;

void link_running(PyExecution* pe) { list_link(g_running, pe); }
void unlink_running(PyExecution* pe) { list_unlink(g_running, pe); }
}  // namespace

Py_ssize_t cancel_running(PyObject* engine) {
  // Snapshot first: terminating runs done-callbacks (Python code) that may start or end bodies.
  std::vector<PyObject*> victims;
  for (PyExecution* p = g_running; p; p = p->run_next) {
    if (p->engine == engine && !p->core->done()) victims.push_back(Py_NewRef(reinterpret_cast<PyObject*>(p)));
  }
  // Executions following another one are running too: async bodies (their coroutine is cancelled
  // by the execution's done-callback, on its loop) and bodies that returned an Execution.
  for (PyExecution* p = g_forwarding; p; p = p->run_next) {
    if (p->engine == engine && !p->core->done()) victims.push_back(Py_NewRef(reinterpret_cast<PyObject*>(p)));
  }
  Py_ssize_t n = 0;
  for (PyObject* o : victims) {
    if (terminate(as_pe(o), State::cancelled, nullptr, CancelledError)) ++n;
    Py_DECREF(o);
  }
  return n;
}

void run_execution(Execution& ex) {
  auto* pe = static_cast<PyExecution*>(ex.payload());
  FiberState fs = acquire_fiber_state();
  if (ex.state() == State::pending) complete(pe, State::cancelled, nullptr);  // draining
  if (ex.state() == State::running) {
    if (pe->trace) install_tracer(pe->trace);
    PyObject* ctx = pe->context;
    if (ctx && PyContext_Enter(ctx) < 0) {
      complete(pe, State::failed, fetch_exception());
      ctx = nullptr;
    } else {
      pe->tstate = fs.tstate;
      link_running(pe);
      PyObject* r = PyObject_Call(pe->fn, pe->args, pe->kwargs);
      unlink_running(pe);
      pe->tstate = nullptr;
      PyObject* exc = r ? nullptr : fetch_exception();
      if (ctx && PyContext_Exit(ctx) < 0) PyErr_Clear();
      if (exc) {
        add_task_note(exc, ex);
        complete(pe, State::failed, exc);
      } else if (is_execution(r)) {
        Py_INCREF(pe);  // the forward's reference
        forward(pe, as_pe(r));
        Py_DECREF(r);
      } else {
        complete(pe, State::succeeded, r);
      }
    }
    if (pe->trace) install_tracer(Py_None);
  }
  Py_CLEAR(pe->fn);
  Py_CLEAR(pe->args);
  Py_CLEAR(pe->kwargs);
  Py_CLEAR(pe->context);
  Py_CLEAR(pe->trace);
  Py_DECREF(pe);  // the queue's reference
  // The end of a body is a safe point too: log unobserved failures here rather than wait for the
  // main thread's next bytecode (it may be blocked for long, e.g. in threading.Event.wait).
  if (g_unobserved) drain_unobserved(nullptr);
  release_fiber_state(fs);
}

void start_failed_execution(Execution& ex) {
  // No stack could be mapped for this execution's fiber (the scheduler's start_failed hook, on the
  // worker's dispatcher): it fails with MemoryError, like any allocation that fails in a body.
  auto* pe = static_cast<PyExecution*>(ex.payload());
  FiberState fs = acquire_fiber_state();
  PyObject* msg = PyUnicode_FromFormat(
      "no fiber stack could be mapped for execution %llu '%s' (memory or vm.max_map_count exhausted)",
      static_cast<unsigned long long>(ex.id()), ex.name().c_str());
  PyObject* exc = msg ? PyObject_CallOneArg(PyExc_MemoryError, msg) : nullptr;
  Py_XDECREF(msg);
  if (!exc) exc = fetch_exception();
  complete(pe, State::failed, exc);
  Py_CLEAR(pe->fn);
  Py_CLEAR(pe->args);
  Py_CLEAR(pe->kwargs);
  Py_CLEAR(pe->context);
  Py_CLEAR(pe->trace);
  Py_DECREF(pe);  // the queue's reference
  release_fiber_state(fs);
}

void abandon_execution(Execution& ex, Execution& failed) {
  // Called inside the failed dependency's finish(), i.e. from complete() with the GIL held.
  auto* pe = static_cast<PyExecution*>(ex.payload());
  PyExecution* dep = nullptr;
  if (pe->deps) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pe->deps); ++i) {
      PyExecution* d = as_pe(PyTuple_GET_ITEM(pe->deps, i));
      if (d->core == &failed) dep = d;
    }
  }
  PyObject* err;
  if (failed.state() == State::cancelled) {
    err = PyObject_CallFunction(DependencyError, "s", 
        (std::string("dependency '") + failed.name() + "' (execution " + std::to_string(failed.id()) +
         ") was cancelled").c_str());
  } else {
    PyObject* cause = dep && dep->exc ? dep->exc : Py_None;
    if (dep) dep->observed = 1;
    PyObject* msg = PyUnicode_FromFormat("dependency '%s' (execution %llu) failed: %R", failed.name().c_str(),
                                         static_cast<unsigned long long>(failed.id()), cause);
    if (!msg) {  // the error's repr itself raised: name its type instead
      PyErr_Clear();
      msg = PyUnicode_FromFormat("dependency '%s' (execution %llu) failed: %s", failed.name().c_str(),
                                 static_cast<unsigned long long>(failed.id()), Py_TYPE(cause)->tp_name);
    }
    err = msg ? PyObject_CallOneArg(DependencyError, msg) : nullptr;
    Py_XDECREF(msg);
    if (err && cause != Py_None) PyException_SetCause(err, Py_NewRef(cause));
  }
  if (!err) err = fetch_exception();
  add_task_note(err, ex);
  complete(pe, State::failed, err);
  // Abandoned executions never reach run_execution: release the queue's reference here.
  Py_CLEAR(pe->fn);
  Py_CLEAR(pe->args);
  Py_CLEAR(pe->kwargs);
  Py_CLEAR(pe->context);
  Py_DECREF(pe);
}

// ---- raw module functions ---------------------------------------------------------------------------

namespace {

// collect_executions: Executions among the arguments, at the top level and one container level deep
// (list, tuple, dict values). Appends borrowed references.
void collect_from(PyObject* o, std::vector<PyObject*>& out, int depth) {
  if (is_execution(o)) {
    out.push_back(o);
    return;
  }
  if (depth == 0) return;
  if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
    PyObject* seq = o;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; ++i) collect_from(PySequence_Fast_GET_ITEM(seq, i), out, depth - 1);
  } else if (PyDict_CheckExact(o)) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) collect_from(v, out, depth - 1);
  }
}

// submit(capsule, fn, name, flags, wait, args, kwargs, workflow_id) -> Execution
//   flags: bit 0 workflow (else task), bit 1 detached. wait: False (no gating), True (all Execution arguments gate the
//   start) or a tuple of Executions that gate it. kwargs: dict or None. workflow_id: str or None.
PyObject* raw_submit(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 8) {
    PyErr_SetString(PyExc_TypeError, "submit() takes 8 arguments");
    return nullptr;
  }
  // flags: bit 0 workflow, bit 1 detached (not cancelled with its parent).
  const long flags = PyLong_AsLong(a[3]);
  if (flags == -1 && PyErr_Occurred()) return nullptr;
  return submit_impl(a[0], a[1], a[2], flags, a[4], a[5], a[6], a[7]);
}

}  // namespace

PyObject* submit_impl(PyObject* capsule, PyObject* fn, PyObject* name, long flags, PyObject* wait, PyObject* args,
                      PyObject* kwargs, PyObject* wf) {
  if (capsule == Py_None) {
    PyErr_SetString(ShutdownError,
                    "this engine was created before fork() in the parent process; its workers do not exist "
                    "here: create a new Engine (module-level tasks get a new default engine automatically)");
    return nullptr;
  }
  EngineCore* eng = engine_from_capsule(capsule);
  if (!eng) return nullptr;
  if (!PyTuple_Check(args) || (kwargs != Py_None && !PyDict_Check(kwargs)) || !PyUnicode_Check(name)) {
    PyErr_SetString(PyExc_TypeError, "submit(): bad internal arguments");
    return nullptr;
  }
  if (eng->scheduler->closed()) {
    PyErr_SetString(ShutdownError, "cannot submit to an engine that is shut down");
    return nullptr;
  }
  // A shutting-down engine admits only children of its own running bodies (a workflow finishing
  // its steps); they are "late", and cancelled if their parent finishes first (complete()), so
  // work that keeps rescheduling itself cannot keep the engine — or the exit — waiting forever.
  bool late = false;
  if (eng->closing.load(std::memory_order_acquire)) {
    Execution* p = current_execution();
    if (!p) p = async_current();
    auto* ppe = p ? static_cast<PyExecution*>(p->payload()) : nullptr;
    if (!ppe || ppe->engine != capsule || p->done() || (flags & kSubmitDetached)) {
      PyErr_SetString(ShutdownError,
                      "cannot submit to an engine that is shutting down (only its running bodies may still "
                      "submit children, and not detached ones)");
      return nullptr;
    }
    late = true;
  }
  Py_ssize_t name_len;
  const char* name_utf8 = PyUnicode_AsUTF8AndSize(name, &name_len);
  if (!name_utf8) return nullptr;
  if (std::memchr(name_utf8, 0, static_cast<std::size_t>(name_len))) {  // C strings would cut it short
    PyErr_SetString(PyExc_ValueError, "a task name must not contain NUL characters");
    return nullptr;
  }
  Kind kind = (flags & kSubmitWorkflow) ? Kind::workflow : Kind::task;

  std::vector<PyObject*> found;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); ++i) collect_from(PyTuple_GET_ITEM(args, i), found, 1);
  if (kwargs != Py_None) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(kwargs, &pos, &k, &v)) collect_from(v, found, 1);
  }

  bool failed_copy = false;
  PyExecution* pe = PyObject_GC_New(PyExecution, ExecutionType);
  if (!pe) return nullptr;
  ExecutionRef core = Execution::create(std::string(name_utf8, static_cast<std::size_t>(name_len)), kind);
  pe->core = core.get();
  pe->core->retain();
  pe->engine = Py_NewRef(capsule);
  pe->fn = Py_NewRef(fn);
  pe->args = Py_NewRef(args);
  pe->kwargs = kwargs == Py_None ? nullptr : Py_NewRef(kwargs);
  // The body runs in a copy of the submitter's context (as an asyncio task does). An empty context
  // needs no copy: the fiber's pooled thread state starts with no context of its own (cleared at
  // release), which is the same thing, and saves a GC-tracked allocation per submit (measured:
  // with 100k queued, their copies made GC passes ~8% of W1).
  PyThreadState* ts = PyThreadState_Get();
  if (ts->context == nullptr || PyObject_Size(ts->context) == 0) {
    pe->context = nullptr;
  } else if (!(pe->context = PyContext_CopyCurrent())) {
    pe->context = nullptr;
    failed_copy = true;
  }
  pe->trace = nullptr;
  pe->result = nullptr;
  pe->exc = nullptr;
  pe->callbacks = nullptr;
  pe->workflow_id = wf == Py_None ? nullptr : Py_NewRef(wf);
  if (wf != Py_None && PyUnicode_Check(wf)) {  // the core's record, for observers (observe.cpp)
    Py_ssize_t n = 0;
    if (const char* w = PyUnicode_AsUTF8AndSize(wf, &n)) {
      core->set_workflow_id(std::string(w, static_cast<std::size_t>(n)));
    } else {
      PyErr_Clear();
    }
  }
  pe->deps = nullptr;
  pe->weakrefs = nullptr;
  pe->extra = nullptr;
  pe->tstate = nullptr;
  pe->run_prev = pe->run_next = nullptr;
  pe->timer_id = 0;
  pe->observed = 0;
  pe->forwarding = 0;
  pe->detached = 0;
  pe->late = late ? 1 : 0;
  pe->fork_generation = g_fork_generation;
  PyObject* self = reinterpret_cast<PyObject*>(pe);
  if (failed_copy) {
    Py_DECREF(self);
    return nullptr;
  }
  // A tracer in the submitting thread (coverage, pdb) follows the work into the fiber (rule 8).
  if (ts->c_tracefunc && ts->c_traceobj) pe->trace = Py_NewRef(ts->c_traceobj);

  pe->detached = (flags & kSubmitDetached) ? 1 : 0;
  bool born_cancelled = false;
  Execution* parent = submit_parent();
  if (parent) {
    core->set_parent_id(parent->id());
    if (!pe->detached) {
      parent->add_child(core);
      // A body that swallowed its cancellation cannot start new work outside the cancelled tree.
      born_cancelled = parent->interrupted();
    }
  }

  std::vector<ExecutionRef> gating;
  if (!found.empty()) {
    track(pe);
    pe->deps = PyTuple_New(static_cast<Py_ssize_t>(found.size()));
    if (!pe->deps) {
      Py_DECREF(self);
      return nullptr;
    }
    for (std::size_t i = 0; i < found.size(); ++i) {
      PyTuple_SET_ITEM(pe->deps, static_cast<Py_ssize_t>(i), Py_NewRef(found[i]));
      core->add_dependency(ExecutionRef(as_pe(found[i])->core));
    }
  }
  if (wait == Py_True) {
    for (PyObject* d : found) gating.emplace_back(as_pe(d)->core);
  } else if (PyTuple_Check(wait)) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wait); ++i) {
      PyObject* d = PyTuple_GET_ITEM(wait, i);
      if (!is_execution(d)) continue;
      gating.emplace_back(as_pe(d)->core);
    }
  }
  // While a recorder observes the engine (observe.cpp): a root's submitting context, where the
  // OpenTelemetry span active at the call lives (distaff.otel parents the root's span on it).
  if (!parent && pe->context && eng->contexts) {
    PyObject* row = Py_BuildValue("(KO)", static_cast<unsigned long long>(core->id()), pe->context);
    if (!row || PyList_Append(eng->contexts, row) < 0) PyErr_Clear();
    Py_XDECREF(row);
  }
  core->set_payload(pe);
  Py_INCREF(self);  // the queue's reference, released by run_execution or abandon_execution
  try {
    eng->scheduler->submit(core, gating);
  } catch (...) {
    core->set_payload(nullptr);
    Py_DECREF(self);
    translate_current_exception();
    // Never leave an execution unfinished: it was not submitted, so it is cancelled.
    core->finish(State::cancelled);
    Py_DECREF(self);
    return nullptr;
  }
  if (born_cancelled) complete(pe, State::cancelled, nullptr);
  return self;
}

namespace {

// own_body: the caller is a body of this engine — on one of its workers, or an async def body of it
// running on an event loop. It cannot wait for the engine to become idle, nor shut it down.
bool own_body(PyObject* capsule, Scheduler* s) {
  if (s->on_worker()) return true;
  Execution* a = async_current();
  auto* pe = a ? static_cast<PyExecution*>(a->payload()) : nullptr;
  return pe && pe->engine == capsule && !a->done();
}

// shutdown(capsule, wait, cancel): see distaff.Engine.shutdown. cancel: 0 nothing, 1 what has not
// started, 2 also the bodies running now.
PyObject* raw_shutdown(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3) {
    PyErr_SetString(PyExc_TypeError, "shutdown(engine, wait, cancel) takes 3 arguments");
    return nullptr;
  }
  EngineCore* eng = engine_from_capsule(a[0]);
  if (!eng) return nullptr;
  Scheduler* s = eng->scheduler.get();
  if (own_body(a[0], s)) {
    PyErr_SetString(PyExc_RuntimeError, "an engine cannot be shut down from one of its own tasks");
    return nullptr;
  }
  const bool wait = PyObject_IsTrue(a[1]);
  const long cancel_arg = PyLong_AsLong(a[2]);
  if (cancel_arg == -1 && PyErr_Occurred()) return nullptr;
  if (cancel_arg < value_of(ShutdownCancel::none) || cancel_arg > value_of(ShutdownCancel::running)) {
    PyErr_SetString(PyExc_ValueError, "shutdown: cancel must be a ShutdownCancel");
    return nullptr;
  }
  const auto cancel = static_cast<ShutdownCancel>(cancel_arg);
  // First stop accepting work (only the running bodies' own children are still admitted), then
  // cancel and wait: a thread that keeps submitting cannot keep shutdown() waiting.
  eng->closing.store(true, std::memory_order_release);
  try {
    if (cancel != ShutdownCancel::none) {
      // Cancel first, so waiting only covers what is already running.
      for (ExecutionRef& ex : s->close(true)) {
        if (auto* pe = static_cast<PyExecution*>(ex->payload())) complete(pe, State::cancelled, nullptr);
      }
    }
    if (cancel == ShutdownCancel::running) cancel_running(a[0]);
    if (!wait) Py_RETURN_NONE;  // the work goes on; the workers are joined later (or at exit)
    const bool main_thread = on_main_thread();
    while (!s->wait_idle_until(main_thread ? Clock::now() + kSignalSlice : Clock::time_point::max())) {
      if (PyErr_CheckSignals() < 0) return nullptr;  // closed, its work still running
    }
    s->close(false);
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
  if (join_engine(eng) < 0) return nullptr;
  Py_RETURN_NONE;
}

// wait_idle(capsule, timeout) -> bool: waits until every submitted execution finished.
PyObject* raw_wait_idle(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2) {
    PyErr_SetString(PyExc_TypeError, "wait_idle() takes 2 arguments");
    return nullptr;
  }
  if (a[0] == Py_None) {
    PyErr_SetString(ShutdownError, "this engine was created before fork() in the parent process; its workers do not exist here");
    return nullptr;
  }
  EngineCore* eng = engine_from_capsule(a[0]);
  if (!eng) return nullptr;
  if (own_body(a[0], eng->scheduler.get())) {
    // Its own execution is live until it returns: the engine can never be idle while it waits.
    PyErr_SetString(DeadlockError, "an engine cannot wait until it is idle from one of its own tasks");
    return nullptr;
  }
  Clock::time_point deadline;
  if (!parse_timeout(a[1], deadline)) return nullptr;
  try {
    for (;;) {
      auto slice = std::min(deadline, Clock::now() + kSignalSlice);
      if (eng->scheduler->wait_idle_until(slice)) Py_RETURN_TRUE;
      if (Clock::now() >= deadline) Py_RETURN_FALSE;
      if (PyErr_CheckSignals() < 0) return nullptr;
    }
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
}

PyObject* raw_current(PyObject*, PyObject*) {
  Execution* cur = current_execution();
  if (!cur) cur = async_current();
  if (!cur || !cur->payload()) Py_RETURN_NONE;
  return Py_NewRef(static_cast<PyObject*>(cur->payload()));
}

// _seconds(value, what, kind) -> float | None: parse_seconds for the facade (one check for both
// sides). None stays None where allowed; "no limit" is inf.
PyObject* raw_seconds(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3 || !PyUnicode_Check(a[1])) {
    PyErr_SetString(PyExc_TypeError, "_seconds(value, what, kind)");
    return nullptr;
  }
  const long kind = PyLong_AsLong(a[2]);
  if (kind == -1 && PyErr_Occurred()) return nullptr;
  if (kind < 0 || kind > static_cast<long>(Seconds::factor)) {
    PyErr_SetString(PyExc_ValueError, "_seconds: bad kind");
    return nullptr;
  }
  const char* what = PyUnicode_AsUTF8(a[1]);
  if (!what) return nullptr;
  double t;
  if (!parse_seconds(a[0], what, static_cast<Seconds>(kind), t)) return nullptr;
  if (a[0] == Py_None) Py_RETURN_NONE;
  return PyFloat_FromDouble(t);
}

// _import_ident(): the "thread" identity importlib's module locks see (distaff/_imports.py). Every
// fiber of a worker shares the worker's OS thread id, so a module lock keyed by it lets a second
// fiber into a module another fiber is still executing. On a fiber: minus its thread state's id
// (unique among live states, renewed on reuse; negative, so never an OS thread id). Elsewhere: the
// OS thread id, as _thread.get_ident() returns it.
PyObject* raw_import_ident(PyObject*, PyObject*) {
  if (current_execution()) {
    return PyLong_FromLongLong(-static_cast<long long>(PyThreadState_GetID(PyThreadState_Get())));
  }
  return PyLong_FromUnsignedLong(PyThread_get_thread_ident());
}

PyObject* raw_set_hooks(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2 && n != 3) {
    PyErr_SetString(PyExc_TypeError, "_set_hooks(await_hook, callback_error_hook, loop_wait_hook=None)");
    return nullptr;
  }
  Py_XSETREF(AsyncAwaitHook, Py_NewRef(a[0]));
  Py_XSETREF(g_callback_error_hook, Py_NewRef(a[1]));
  if (n == 3) Py_XSETREF(g_loop_wait_hook, a[2] == Py_None ? nullptr : Py_NewRef(a[2]));
  Py_RETURN_NONE;
}

// _reaches_any(execution, execs) -> bool: would waiting on `execution` wait (through dependencies,
// forwards and parked waits) on one of `execs` (or is it one of them)? The loop-thread deadlock check.
PyObject* raw_reaches_any(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2 || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "_reaches_any(execution, execs)");
    return nullptr;
  }
  PyObject* seq = PySequence_Fast(a[1], "_reaches_any: execs must be a sequence");
  if (!seq) return nullptr;
  Execution* from = as_pe(a[0])->core;
  bool hit = false;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && !hit; ++i) {
    PyObject* o = PySequence_Fast_GET_ITEM(seq, i);
    if (!is_execution(o)) continue;
    Execution* m = as_pe(o)->core;
    hit = m == from || (!m->done() && m->would_deadlock(*from));
  }
  Py_DECREF(seq);
  return PyBool_FromLong(hit);
}

// sleep(seconds): fiber-aware sleep. In a task body it suspends the fiber (the worker runs others);
// elsewhere it is time.sleep.
PyObject* g_time_sleep = nullptr;
PyObject* raw_sleep(PyObject*, PyObject* seconds) {
  double t;
  if (!parse_seconds(seconds, "sleep length", Seconds::length, t)) return nullptr;
  if (!current_execution()) {
    if (!g_time_sleep) {
      PyObject* time = PyImport_ImportModule("time");
      if (!time) return nullptr;
      g_time_sleep = PyObject_GetAttrString(time, "sleep");
      Py_DECREF(time);
      if (!g_time_sleep) return nullptr;
    }
    // time.sleep refuses lengths past ~292 years: sleep in day-long pieces (inf: until interrupted).
    for (;;) {
      const double piece = std::min(t, 86400.0);
      PyObject* arg = PyFloat_FromDouble(piece);
      PyObject* r = arg ? PyObject_CallOneArg(g_time_sleep, arg) : nullptr;
      Py_XDECREF(arg);
      if (!r) return nullptr;
      Py_DECREF(r);
      t -= piece;
      if (!(t > 0)) Py_RETURN_NONE;
    }
  }
  auto deadline = deadline_after(t);
  WaitStatus st;
  try {
    st = sleep_until(deadline);
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
  if (st == WaitStatus::interrupted) {
    raise_interrupted();
    return nullptr;
  }
  Py_RETURN_NONE;
}

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
  if (pe->timer_id) disarm_timeout(pe);
  track(pe);
  if (!pe->extra && !(pe->extra = PyDict_New())) return nullptr;
  if (PyDict_SetItemString(pe->extra, "timeout", a[1]) < 0) return nullptr;
  if (!g_timer) g_timer = new Timer();
  Py_INCREF(pe);  // the timer's reference
  try {
    pe->timer_id = g_timer->schedule(deadline, &timeout_fired, pe);
  } catch (...) {
    Py_DECREF(pe);
    translate_current_exception();
    return nullptr;
  }
  Py_RETURN_NONE;
}

// stop_timer(): joins the timer thread (at exit, before finalisation).
PyObject* raw_stop_timer(PyObject*, PyObject*) {
  if (g_timer) {
    for (void* arg : g_timer->stop()) Py_DECREF(static_cast<PyObject*>(arg));
  }
  Py_RETURN_NONE;
}

// _after_fork_in_child(): the timer thread does not exist in a forked child; forget it (leaked, not
// destroyed: its mutex may have been held at fork) so the next timeout starts a new one.
PyObject* raw_after_fork(PyObject*, PyObject*) {
  g_timer = nullptr;
  g_running = nullptr;  // those bodies' fibers do not exist here
  g_forwarding = nullptr;
  ++g_fork_generation;
  lifecycle_after_fork();
  Py_RETURN_NONE;
}

PyObject* raw_drain_unobserved(PyObject*, PyObject*) {
  drain_unobserved(nullptr);
  Py_RETURN_NONE;
}

PyObject* raw_live_executions(PyObject*, PyObject*) { return PyLong_FromLongLong(live_executions()); }

}  // namespace

PyMethodDef raw_functions[] = {
    {"submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_submit)), METH_FASTCALL,
     "submit(engine, fn, name, flags, wait, args, kwargs, workflow_id) -> Execution"},
    {"shutdown", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_shutdown)), METH_FASTCALL,
     "shutdown(engine, wait, cancel)"},
    {"wait_idle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_wait_idle)), METH_FASTCALL,
     "wait_idle(engine, timeout) -> bool"},
    {"_seconds", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_seconds)), METH_FASTCALL,
     "_seconds(value, what, kind) -> float | None: validates a number of seconds (bindings.hpp, Seconds)"},
    {"_import_ident", &raw_import_ident, METH_NOARGS,
     "_import_ident() -> int: the thread identity importlib's module locks use (per fiber on a worker)"},
    {"current_execution", &raw_current, METH_NOARGS,
     "current_execution() -> Execution | None: the execution whose body is running here."},
    {"sleep", &raw_sleep, METH_O,
     "sleep(seconds)\n--\n\nIn a task body: suspends the fiber, not the thread. Elsewhere: time.sleep."},
    {"arm_timeout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_arm_timeout)), METH_FASTCALL,
     "arm_timeout(execution, seconds)"},
    {"stop_timer", &raw_stop_timer, METH_NOARGS, "stop_timer(): join the timeout thread"},
    {"_after_fork_in_child", &raw_after_fork, METH_NOARGS, "reset process-wide state in a forked child"},
    {"_drain_unobserved", &raw_drain_unobserved, METH_NOARGS, "log the queued unobserved failures now"},
    {"live_executions", &raw_live_executions, METH_NOARGS, "Core execution records alive (process-wide)."},
    {"_set_hooks", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_set_hooks)), METH_FASTCALL,
     "_set_hooks(await_hook, callback_error_hook, loop_wait_hook=None)"},
    {"_reaches_any", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_reaches_any)), METH_FASTCALL,
     "_reaches_any(execution, execs) -> bool: does waiting on execution wait on one of execs?"},
    {nullptr, nullptr, 0, nullptr}};

bool init_execution_type(PyObject* module) {
  g_async_current = PyContextVar_New("distaff_async_current", nullptr);
  if (!g_async_current || PyModule_AddObjectRef(module, "_async_current", g_async_current) < 0) return false;
  PyObject* threading = PyImport_ImportModule("threading");
  if (!threading) return false;
  PyObject* main = PyObject_CallMethod(threading, "main_thread", nullptr);
  Py_DECREF(threading);
  if (!main) return false;
  PyObject* ident = PyObject_GetAttrString(main, "ident");
  Py_DECREF(main);
  if (!ident) return false;
  g_main_thread_ident = PyLong_AsUnsignedLong(ident);
  Py_DECREF(ident);

  ExecutionType = reinterpret_cast<PyTypeObject*>(PyType_FromModuleAndSpec(module, &pe_spec, nullptr));
  if (!ExecutionType) return false;
  if (PyModule_AddObjectRef(module, "Execution", reinterpret_cast<PyObject*>(ExecutionType)) < 0) return false;
  return true;
}

}  // namespace distaff::py
