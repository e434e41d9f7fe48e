// The Python Execution type: its one constructor, its slots (GC, finalizer, repr, await), its
// methods (result, exception, cancel, done-callbacks...) and getters, and complete(), which stores an
// outcome and runs the done-callbacks.
//
// Everything here that can suspend a fiber — result(), exception() — is a raw CPython function, never
// a pybind11 def: pybind11 keeps a per-OS-thread stack of in-flight calls that a suspended fiber would
// leave out of order (python_fiber.hpp, rule 4). Raw calls are also about 3x cheaper, which matters on
// submit and result.

#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.hpp"

#include <structmember.h>

namespace distaff::py {

PyTypeObject* ExecutionType = nullptr;
PyObject* CallbackErrorHook = nullptr;  // distaff._errors.log_callback_error

PyExecution* new_execution(const ExecutionRef& core, PyObject* engine) {
  PyExecution* pe = PyObject_GC_New(PyExecution, ExecutionType);
  if (!pe) return nullptr;
  pe->core = core.get();
  pe->core->retain();
  pe->engine = Py_XNewRef(engine);
  pe->fn = pe->args = pe->kwargs = pe->context = pe->trace = nullptr;
  pe->result = pe->exc = pe->callbacks = pe->workflow_id = pe->deps = pe->weakrefs = nullptr;
  pe->extra = nullptr;
  pe->tstate = nullptr;
  pe->run_prev = pe->run_next = nullptr;
  pe->observed = 0;
  pe->forwarding = 0;
  pe->detached = 0;
  pe->late = 0;
  pe->shielded = 0;
  pe->deferred = nullptr;
  pe->interrupt_sent = 0;
  pe->redelivery = nullptr;
  pe->promise = 0;
  pe->fork_generation = g_fork_generation;
  return pe;  // untracked until it holds something cyclic (see track())
}

PyExecution* new_virtual_execution(const std::string& name, Kind kind) {
  Execution* parent = submit_parent();
  ExecutionRef core = Execution::promise(name, kind, parent ? parent->id() : 0);
  PyExecution* pe = new_execution(core, nullptr);
  if (pe) core->set_payload(pe);
  return pe;
}

namespace {

// handout: the exception of failed `pe` is about to reach the code running here.
void handout(PyExecution* pe) {
  if (!pe->exc) return;
  Execution* r = running_here();
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

void pe_finalize(PyObject* self) { report_unobserved(as_pe(self)); }

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

// wait_for_call: the start of result(timeout=None) and exception(timeout=None): parses the
// arguments and waits until `pe` is finished. False with a Python error set.
bool wait_for_call(const char* fname, PyExecution* pe, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  PyObject* timeout;
  if (!parse_timeout_arg(fname, args, nargs, kwnames, &timeout)) return false;
  if (!pe->core->done()) return wait_blocking(pe, timeout);
  if (timeout != Py_None) {  // bad input fails the same whether or not it is done
    Clock::time_point unused;
    if (!parse_timeout(timeout, unused)) return false;
  }
  return true;
}

PyObject* pe_result(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  PyExecution* pe = as_pe(self);
  if (!wait_for_call("result", pe, args, nargs, kwnames)) return nullptr;
  switch (pe->core->state()) {
    case State::succeeded:
      return Py_NewRef(pe->result ? pe->result : Py_None);
    case State::failed:
      pe->observed = 1;
      (void)cycle_error_seen(pe->exc);  // a forward cycle's error: retrieved for the whole cycle
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
  if (!wait_for_call("exception", pe, args, nargs, kwnames)) return nullptr;
  State s = pe->core->state();
  if (s == State::cancelled) return cancelled_error(pe);
  if (s == State::failed && pe->exc) {
    pe->observed = 1;
    (void)cycle_error_seen(pe->exc);
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

// _shield(): from now on a cancel or timeout of this execution finishes it at once but raises
// nothing in its body (Elsewhere: the body is handing its work to a runner, and an exception at an
// arbitrary bytecode there loses bookkeeping; the execution's done callback stops the work; and
// _SlotBody's tail, which gives the concurrency slot back). Called by the body itself, it also drops
// an interrupt already queued for it (a cancel that came while the body ran Python and has not fired
// yet): once _shield() returns, nothing is raised in the body. The execution is finished already.
PyObject* pe_shield(PyObject* self, PyObject*) {
  PyExecution* pe = as_pe(self);
  pe->shielded = 1;
  if (pe->tstate && pe->tstate == PyThreadState_Get()) Py_CLEAR(pe->tstate->async_exc);
  Py_RETURN_NONE;
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

// call_callback: calls one done-callback. Like concurrent.futures, an Exception it raises is logged
// (logger "distaff"), never propagated. `at_once`: add_done_callback runs it now, as part of the
// caller's own code — then a KeyboardInterrupt or SystemExit (a Ctrl-C that landed in it, sys.exit())
// propagates to that caller, as concurrent.futures lets any non-Exception through (returns false with
// it set). A callback run by a completion is logged whatever it raised: no caller of its is there to
// receive it, and a worker must not be taken down by it. Except a KeyboardInterrupt on the main
// thread outside bodies (a completion there: cancel(), a promise settled, an engine shut down): a
// Ctrl-C that landed in the callback. It is delivered again, as a SIGINT the main thread's code
// handles at its next check (its SIGINT handler: KeyboardInterrupt by default), not swallowed.
bool call_callback(PyObject* cb, PyObject* self, bool at_once = false) {
  PyObject* r = PyObject_CallOneArg(cb, self);
  if (r) {
    Py_DECREF(r);
    return true;
  }
  if (at_once && !PyErr_ExceptionMatches(PyExc_Exception)) return false;
  // The interruption (cancel, timeout) of the body that runs this callback — add_done_callback on a
  // finished execution, or a completion the body caused (cancel(), set_result) — landed in it: it
  // belongs to the body, not to the callback. Run at once, it propagates to the body's call; run by
  // a completion, it is queued again for the body's next bytecode. Logging it lost it, and a body
  // looping on such calls ran on after its execution had ended.
  if (PyObject* et = PyErr_Occurred(); et && interrupt_of_this_body(et)) {
    if (at_once) return false;
    Py_INCREF(et);
    PyErr_Clear();
    const bool queued = requeue_interrupt(et);
    Py_DECREF(et);
    if (queued) return true;
    PyErr_SetNone(et);
  }
  // A KeyboardInterrupt, SystemExit (or other non-Exception) raised on the main thread — by a
  // signal handler that ran in the callback (a Ctrl-C, a SIGTERM handler's sys.exit), or by the
  // callback itself — goes on to the program, as a callback's does in concurrent.futures and
  // asyncio: raised at the main thread's next bytecode or by the wait it is in (errors.cpp,
  // clear_error_keeping_signals). (A Ctrl-C was delivered again as a new SIGINT before, which ran
  // the program's own SIGINT handler twice for one Ctrl-C: an outsider's find, session 16.)
  if (defer_signal_exception()) return true;
  PyObject* exc = fetch_exception();
  if (CallbackErrorHook && exc) {
    PyObject* lr = PyObject_CallFunctionObjArgs(CallbackErrorHook, cb, self, exc, nullptr);
    if (lr) {
      Py_DECREF(lr);
    } else {
      report_error_keeping_signals(cb);
    }
  }
  Py_XDECREF(exc);
  return true;
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
  push_callback_parent(ts, parent ? as_pe(parent)->core : nullptr);
  call_callback(fn, self);
  pop_callback_parent(ts);
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
    if (!call_callback(fn, self, /*at_once=*/true)) return nullptr;
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
    if (!call_callback(fn, self, /*at_once=*/true)) return nullptr;
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
  for (std::uint64_t id : c->dependency_id_span()) {
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
  Execution* receiver = running_here();
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
    {"_shield", &pe_shield, METH_NOARGS, "_shield(): a cancel no longer raises in this execution's body."},
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

PyObject* raw_live_executions(PyObject*, PyObject*) { return PyLong_FromLongLong(live_executions()); }

PyMethodDef execution_functions[] = {
    {"live_executions", &raw_live_executions, METH_NOARGS, "Core execution records alive (process-wide)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

void stop_external(PyObject* stopper, PyExecution* pe) {
  PyObject* stop = PyObject_GetAttrString(stopper, "_external_stop");
  if (!stop) {
    report_error_keeping_signals(stopper);
    return;
  }
  call_callback(stop, reinterpret_cast<PyObject*>(pe));
  Py_DECREF(stop);
}

PyObject* execution_result(PyObject* execution) { return pe_result(execution, nullptr, 0, nullptr); }

bool complete(PyExecution* pe, State state, PyObject* value) {
  Execution* c = pe->core;
  if (c->done()) {
    Py_XDECREF(value);
    return false;
  }
  // Finishing runs callbacks that may drop the last other reference to `pe` — forward_done
  // releases the forwarder's reference to the execution it followed — and callers may hold none
  // of their own (shutdown's cancel sweep reaches executions through their core's payload): ASan
  // saw remember_finished() read a freed `pe` after cancel_if_not_started(). Hold one throughout.
  Py_INCREF(pe);
  struct Hold {
    PyExecution* p;
    ~Hold() { Py_DECREF(p); }
  } hold{pe};
  // A body that returned PENDING, finished other than by settle() (which lets go first): its work
  // is stopped below, and the reference held for it goes at the end (`hold` keeps `pe` meanwhile).
  // Taken now: `result` holds the stopper until then.
  struct External {
    PyExecution* p;
    PyObject* stopper;
    ~External() {
      Py_XDECREF(stopper);
      if (stopper) Py_DECREF(p);
    }
  } external{pe, end_external(pe)};
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
  if (external.stopper) stop_external(external.stopper, pe);
  if (!finished) return false;
  if (eng && eng->history_limit) remember_finished(eng, pe);
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

void cancel_late_forward(PyExecution* pe, PyExecution* target) {
  if (!target->late || target->detached || target->core->done()) return;
  for (const ExecutionRef& k : pe->core->children()) {
    if (k.get() == target->core) {
      terminate(target, State::cancelled, nullptr, CancelledError);
      return;
    }
  }
}

bool init_execution_type(PyObject* module) {
  ExecutionType = reinterpret_cast<PyTypeObject*>(PyType_FromModuleAndSpec(module, &pe_spec, nullptr));
  if (!ExecutionType) return false;
  if (PyModule_AddObjectRef(module, "Execution", reinterpret_cast<PyObject*>(ExecutionType)) < 0) return false;
  return PyModule_AddFunctions(module, execution_functions) == 0;
}

}  // namespace distaff::py
