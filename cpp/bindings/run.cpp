// Running a body: the scheduler's hooks (run, start_failed, abandon), the running list, and
// forwarding (a body that returned an Execution, or a promise, follows it to its outcome).

#include <string>
#include <vector>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

namespace {

void forward_done(Execution& target_core, void* arg);

// The forwarding list: every execution of an engine whose body returned and which now follows
// another execution (an async body's execution follows its promise until the coroutine ends).
// Linked by forward(), unlinked by forward_done() (the forward holds a reference meanwhile), GIL
// held. It reuses run_prev/run_next: a body is unlinked from the running list before it forwards.
PyExecution* g_forwarding = nullptr;
}  // namespace

PyObject* ReturnedCoroutineHook = nullptr;
PyObject* PendingSentinel = nullptr;

namespace {

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

// The running list: every execution whose body is on a fiber now (cancel_running, Ctrl-C at exit).
// Linked and unlinked by the body's own fiber with the GIL held; read with the GIL held, so no lock.
PyExecution* g_running = nullptr;

void link_running(PyExecution* pe) { list_link(g_running, pe); }
void unlink_running(PyExecution* pe) { list_unlink(g_running, pe); }

// release_body: drops what only running the body needed (the queue's references go separately).
void release_body(PyExecution* pe) {
  Py_CLEAR(pe->fn);
  Py_CLEAR(pe->args);
  Py_CLEAR(pe->kwargs);
  Py_CLEAR(pe->context);
  Py_CLEAR(pe->trace);
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
      if (pe->promise) {
        // A promise is no execution: no note of its own, but the one that follows it (the
        // execution whose async def or executor= body returned an Execution) gets one below.
        pe->promise = 2;
      } else if (target->exc && (!target->promise || target->promise == 2)) {
        // The error passes through this execution as if its body had raised it: handed to it
        // (so the notes it has are kept), then a note of its own (docs/concepts.md#errors). Not
        // when it follows its own body's promise settled with the body's error: that was noted
        // where it was settled (_AsyncBody._settle, the executor's remote-traceback note).
        add_forward_note(target->exc, *pe->core);
      }
      complete(pe, State::failed, target->exc ? Py_NewRef(target->exc) : nullptr);
      break;
    default:
      complete(pe, State::cancelled, nullptr);
  }
  Py_DECREF(t);
  Py_DECREF(pe);
}

}  // namespace

// forward_execution: `pe` completes when `target` does (takes its own reference to pe).
void forward_execution(PyExecution* pe, PyExecution* target) {
  try {
    pe->core->forward_to(*target->core);
  } catch (...) {
    translate_current_exception();
    PyObject* exc = fetch_exception();
    mark_cycle_error(exc);  // reported once for the whole cycle (unobserved.cpp)
    complete(pe, State::failed, exc);
    return;
  }
  Py_INCREF(pe);  // the forward's reference, released by forward_done
  pe->forwarding = 1;
  track(pe);
  Py_XSETREF(pe->result, Py_NewRef(reinterpret_cast<PyObject*>(target)));
  if (pe->engine) link_forwarding(pe);  // cancel_running reaches it (an async body's execution)
  target->core->add_callback(&forward_done, pe);
}

void hold_external(PyExecution* pe, PyObject* stopper) {
  Py_INCREF(pe);  // the external reference, dropped as it finishes (complete, settle)
  pe->forwarding = 2;
  Py_XSETREF(pe->result, Py_NewRef(stopper));
  track(pe);
  if (pe->engine) link_forwarding(pe);  // cancel_running reaches it
}

PyObject* end_external(PyExecution* pe) {
  if (pe->forwarding != 2) return nullptr;
  pe->forwarding = 0;
  if (pe->engine) unlink_forwarding(pe);
  PyObject* stopper = pe->result;
  pe->result = nullptr;
  return stopper;
}

std::vector<PyObject*> running_bodies(PyObject* engine) {
  std::vector<PyObject*> out;
  for (PyExecution* p = g_running; p; p = p->run_next) {
    if (p->engine == engine && !p->core->done()) out.push_back(Py_NewRef(reinterpret_cast<PyObject*>(p)));
  }
  // Executions following another one are running too: async bodies (their coroutine is cancelled
  // by the execution's done-callback, on its loop) and bodies that returned an Execution.
  for (PyExecution* p = g_forwarding; p; p = p->run_next) {
    if (p->engine == engine && !p->core->done()) out.push_back(Py_NewRef(reinterpret_cast<PyObject*>(p)));
  }
  return out;
}

void running_after_fork() {
  g_running = nullptr;  // those bodies' fibers do not exist here
  g_forwarding = nullptr;
}

namespace {
// settle_body: the execution's outcome from what its body returned (`r`) or raised (`exc`); takes
// both references.
void settle_body(PyExecution* pe, PyObject* r, PyObject* exc) {
  Execution& ex = *pe->core;
  if (exc && ex.owner() && ex.owner()->draining() &&
      PyObject_TypeCheck(exc, reinterpret_cast<PyTypeObject*>(CancelledError))) {
    // The body let through the CancelledError of something the drain cancelled (a child's
    // result(), a wait on a pending execution): a shutdown that cancels ends it cancelled, as it
    // does a wait= dependent of one (abandon_execution) — not failed, logged as never retrieved.
    Py_DECREF(exc);
    complete(pe, State::cancelled, nullptr);
  } else if (exc) {
    add_task_note(exc, ex);
    complete(pe, State::failed, exc);
  } else if (is_execution(r)) {
    forward_execution(pe, as_pe(r));
    cancel_late_forward(pe, as_pe(r));
    Py_DECREF(r);
  } else if (r == PendingSentinel) {
    Py_DECREF(r);
    if (!ex.done()) {
      hold_external(pe, pe->fn);  // settled later (_core.settle), or stopped by a cancel
    } else if (pe->fn) {
      stop_external(pe->fn, pe);  // cancelled while the body handed its work over: stop it now
    }
  } else {
    complete(pe, State::succeeded, r);
  }
}
}  // namespace

void run_execution(Execution& ex) {
  auto* pe = static_cast<PyExecution*>(ex.payload());
  FiberState fs = acquire_fiber_state();
  if (ex.state() == State::pending) complete(pe, State::cancelled, nullptr);  // draining
  // Shut down with cancel_pending or cancel_running (the scheduler drains) while this worker, having
  // started it, waited for the GIL: the body has run no Python yet — it had not started when the
  // shutdown cancelled what had not, and the running list did not have it — so it is cancelled
  // too: no body of the engine starts after the cancel. (With cancel_pending such a body used to
  // run after the drain, and its submits met a closed scheduler: ShutdownError.)
  if (ex.state() == State::running && ex.owner() && ex.owner()->draining()) {
    complete(pe, State::cancelled, nullptr);
  }
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
      if (pe == g_forked_body) end_forked_body(r);  // the body's copy in a process it forked
      if (r && PyCoro_CheckExact(r) && ReturnedCoroutineHook && pe->engine) {
        // A plain callable that returned a coroutine (a sync wrapper of an async def): the
        // coroutine is the body's real work, so it is awaited as an async body is — on the
        // engine's loop, the execution following it — not handed out un-run as the result.
        // Still in the body's context and fiber: current_execution() is this execution.
        PyObject* follow = PyObject_CallFunctionObjArgs(ReturnedCoroutineHook, r, pe->engine, nullptr);
        Py_SETREF(r, follow);
      }
      unlink_running(pe);
      pe->tstate = nullptr;
      end_redelivery(pe);  // a cancelled body that ended: its re-delivery's reference goes now
      // terminate() (cancel, timeout, shutdown) may have queued an asynchronous exception for the
      // body while it was in C code that then returned without another bytecode: the execution
      // is finished already, and the exception would fire in whatever Python runs next on this
      // thread state — a finalizer of the body's arguments, a done-callback. Drop it.
      Py_CLEAR(fs.tstate->async_exc);
      PyObject* exc = r ? nullptr : fetch_exception();
      if (pe->interrupt_sent) release_logging_locks_left_by_interrupt(fs.tstate);
      if (ctx && PyContext_Exit(ctx) < 0) PyErr_Clear();
      settle_body(pe, r, exc);
    }
    if (pe->trace) install_tracer(Py_None);
  }
  // Forked after the body returned (by a done-callback on its fiber): the child ends here too.
  if (pe == g_forked_body) end_forked_body(Py_NewRef(Py_None));
  release_body(pe);
  Py_DECREF(pe);  // the queue's reference
  // The end of a body is a safe point too: log unobserved failures here rather than wait for the
  // main thread's next bytecode (it may be blocked for long, e.g. in threading.Event.wait).
  drain_unobserved_now();
  release_fiber_state(fs);
}

PyObject* run_inline_call(PyExecution* pe, InlineStart& inl, bool want_result) {
  // submit_impl started `pe` on this thread (Scheduler::begin_inline): current_execution() is it.
  // The body runs here as run_execution runs it on a fiber, with this thread's own state: its
  // context is a copy of the caller's (what it sets does not leak back), it is on the running list
  // (cancel_running, the exit's cancel), and terminate() raises in it through pe->tstate.
  Execution& ex = *pe->core;
  Scheduler* s = inl.scheduler;
  const unsigned generation = g_fork_generation;
  PyThreadState* ts = PyThreadState_Get();
  PyObject* passes_on = nullptr;  // a KeyboardInterrupt/SystemExit the caller gets as it is
  enter_inline(s);
  if (ex.state() == State::running && s->draining()) complete(pe, State::cancelled, nullptr);
  if (ex.state() == State::running) {
    PyObject* ctx = PyContext_CopyCurrent();
    if (!ctx || PyContext_Enter(ctx) < 0) {
      complete(pe, State::failed, fetch_exception());
      Py_CLEAR(ctx);
    } else {
      pe->tstate = ts;
      link_running(pe);
      PyObject* r = PyObject_Call(pe->fn, pe->args, pe->kwargs);
      const bool forked = generation != g_fork_generation;
      if (!forked && r && PyCoro_CheckExact(r) && ReturnedCoroutineHook && pe->engine) {
        PyObject* follow = PyObject_CallFunctionObjArgs(ReturnedCoroutineHook, r, pe->engine, nullptr);
        Py_SETREF(r, follow);
      }
      unlink_running(pe);
      pe->tstate = nullptr;
      // An interruption terminate() queued for the body that did not fire before it returned: its
      // execution is finished, and it would fire in the caller's next line. Only distaff's own are
      // dropped: this is the caller's thread state.
      if (ts->async_exc == CancelledError || ts->async_exc == TimeoutErrorType || ts->async_exc == InterruptedType) {
        Py_CLEAR(ts->async_exc);
      }
      PyObject* exc = r ? nullptr : fetch_exception();
      if (pe->interrupt_sent) release_logging_locks_left_by_interrupt(ts);
      if (PyContext_Exit(ctx) < 0) PyErr_Clear();
      Py_DECREF(ctx);
      if (forked) {
        // This process was forked by the body (os.fork() in it): the engine's threads are the
        // parent's. As for a body forked on a worker's fiber, the body's copy was the child's
        // program, and the process ends with it (end_forked_body: exit status, streams flushed).
        g_forked_body = pe;
        if (exc) {
          raise_stored(exc);
          Py_DECREF(exc);
        }
        end_forked_body(exc ? nullptr : r);
      } else {
        end_redelivery(pe);
        if (exc && !ex.done() && on_python_main_thread() &&
            (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
             PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) || is_inline_signal_exception(exc))) {
          // Ctrl-C (or a SIGTERM handler's sys.exit, or the body's own), or whatever a signal
          // handler raised in a distaff wait of the body: as when it lands in the main thread's
          // wait for a worker's body, the execution is cancelled with its tree and the exception
          // goes on as it is. (Not once the execution was cancelled or timed out: the caller gets
          // that, as from result(); other BaseExceptions fail it, as on a worker.)
          passes_on = exc;
          terminate(pe, State::cancelled, nullptr, CancelledError);
        } else {
          settle_body(pe, r, exc);
        }
      }
    }
  }
  leave_inline();
  release_body(pe);
  s->end_inline(ex, inl.saved);
  drain_unobserved_now();
  PyObject* out;
  if (passes_on) {
    raise_stored(passes_on);
    Py_DECREF(passes_on);
    out = nullptr;
  } else if (!want_result) {
    return reinterpret_cast<PyObject*>(pe);  // the caller's reference now
  } else {
    out = execution_result(reinterpret_cast<PyObject*>(pe));  // waits if it follows another execution
  }
  Py_DECREF(pe);
  return out;
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
  release_body(pe);
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
  if (failed.state() == State::cancelled && ex.owner() && ex.owner()->draining()) {
    // shutdown(cancel_pending=/cancel_running=) cancels everything that has not started, this
    // execution included: its sweep just got to the dependency first. Cancelled, as promised, not
    // failed with a DependencyError nobody asked for (each was logged as never retrieved).
    complete(pe, State::cancelled, nullptr);
    release_body(pe);
    Py_DECREF(pe);
    return;
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
  release_body(pe);
  Py_DECREF(pe);
}

}  // namespace distaff::py
