// Wait-sets and virtual executions (gather, join, promises) for Python. Raw functions only: every
// wait here can suspend a fiber (python_fiber.hpp, rule 4).

#include <memory>
#include <string>

#include "bindings.hpp"
#include "distaff/wait_set.hpp"

namespace distaff::py {

namespace {

// members_of: the core executions of a list of Execution objects. Sets TypeError on anything else.
bool members_of(PyObject* list, std::vector<ExecutionRef>& out) {
  if (!PyList_Check(list)) {
    PyErr_SetString(PyExc_TypeError, "expected a list of Executions");
    return false;
  }
  Py_ssize_t n = PyList_GET_SIZE(list);
  out.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* o = PyList_GET_ITEM(list, i);
    if (!is_execution(o)) {
      PyErr_Format(PyExc_TypeError, "expected Executions, got %.100s at position %zd", Py_TYPE(o)->tp_name, i);
      return false;
    }
    if (forked_away(as_pe(o))) {
      raise_forked_execution(*as_pe(o)->core);
      return false;
    }
    out.emplace_back(as_pe(o)->core);
  }
  return true;
}

bool parse_mode(PyObject* o, WaitCondition& mode) {
  long m = PyLong_AsLong(o);
  if (m == -1 && PyErr_Occurred()) return false;
  if (m < static_cast<long>(WaitCondition::all) || m > static_cast<long>(WaitCondition::first_exception)) {
    PyErr_SetString(PyExc_ValueError, "bad wait mode (a WaitFor)");
    return false;
  }
  mode = static_cast<WaitCondition>(m);
  return true;
}

// check_deadlock: DeadlockError (false) if `self` (the waiting execution, or null) waiting on
// `members` under `mode` would close a cycle of waits.
bool check_deadlock(Execution* self, const std::vector<ExecutionRef>& members, WaitCondition mode) {
  if (!self || members.empty()) return true;
  if (mode == WaitCondition::any) {
    // A wait for the first of them is a cycle only when every one of them waits on this one.
    for (const ExecutionRef& m : members) {
      if (m->done() || (m.get() != self && !self->would_deadlock(*m))) return true;
    }
    raise_deadlock(*self, *members.front());
    return false;
  }
  for (const ExecutionRef& m : members) {
    if (m.get() == self || (!m->done() && self->would_deadlock(*m))) {
      raise_deadlock(*self, *m);
      return false;
    }
  }
  return true;
}

// wait_all: ALL_COMPLETED without a callback on every member. It waits for the last unfinished
// member, then for the last one before it still unfinished, and so on: members mostly finish in
// about the order they were submitted, so one or a few parks cover them all, and the members that
// finish meanwhile run no wait-set callback. A WaitSet over all of them registered a callback on
// each (a node and the member's mutex) and ran it at each completion (the set's mutex): for 100k
// no-op tasks (bench/ W1) ~0.1 us per member on the two threads. Each park is a one-member
// WaitSet, so timeouts, a cancel of the waiting execution and Ctrl-C end it as before. The index
// of the first failed member is not computed (-1; another pass over every member): callers of
// ALL_COMPLETED read `satisfied` and the members' own states (distaff.wait).
PyObject* wait_all(const std::vector<ExecutionRef>& members, Clock::time_point deadline) {
  Execution* self = interruptible_execution();
  for (std::size_t i = members.size(); i-- > 0;) {
    if (members[i]->done()) continue;
    WaitSet ws(std::vector<ExecutionRef>{members[i]}, WaitCondition::all);
    int r = wait_sliced([&](Clock::time_point d) { return ws.wait_until(d); }, deadline);
    if (r < 0) return nullptr;
    // Woken early: the waiting execution was cancelled or timed out (or was already: see below).
    if ((r == 0 && !ws.satisfied()) || (r == 1 && self && self->interrupted() && !ws.satisfied())) {
      raise_interrupted();
      return nullptr;
    }
    if (r != 0) return Py_BuildValue("(OL)", Py_False, -1LL);
  }
  return Py_BuildValue("(OL)", Py_True, -1LL);
}

// wait_set(execs, timeout, mode) -> (satisfied, first_failed_index); the index is -1 for ALL_COMPLETED
PyObject* raw_wait_set(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3) {
    PyErr_SetString(PyExc_TypeError, "wait_set(execs, timeout, mode)");
    return nullptr;
  }
  std::vector<ExecutionRef> members;
  WaitCondition mode;
  Clock::time_point deadline;
  if (!members_of(a[0], members) || !parse_timeout(a[1], deadline) || !parse_mode(a[2], mode)) return nullptr;
  if (!check_deadlock(current_execution(), members, mode)) return nullptr;
  if (mode == WaitCondition::all) return wait_all(members, deadline);
  WaitSet ws(std::move(members), mode);
  Execution* self = interruptible_execution();
  int r = wait_sliced([&](Clock::time_point d) { return ws.wait_until(d); }, deadline);
  if (r < 0) return nullptr;
  // Woken early because the waiting execution was cancelled or timed out — or it was already, and
  // the wait returned at once without its condition: every later wait of such a body raises again
  // (as result(), sleep() and the sync primitives do), or `while not wait(...).done` would spin.
  if ((r == 0 && !ws.satisfied()) || (r == 1 && self && self->interrupted() && !ws.satisfied())) {
    raise_interrupted();
    return nullptr;
  }
  return Py_BuildValue("(NL)", PyBool_FromLong(r == 0), static_cast<long long>(ws.first_failed()));
}

// completion(execs) -> handle; completion_next(handle, timeout) -> index | COMPLETION_EXHAUSTED
void completion_destructor(PyObject* capsule) {
  delete static_cast<WaitSet*>(PyCapsule_GetPointer(capsule, "distaff.Completion"));
}

// each_notify/each_release: the Python callable given to completion(execs, notify), called with no
// arguments after each member completion (GIL held: completions happen in complete()).
void each_notify(void* arg) {
  PyObject* r = PyObject_CallNoArgs(static_cast<PyObject*>(arg));
  if (r) {
    Py_DECREF(r);
  } else {
    report_error_keeping_signals(static_cast<PyObject*>(arg));
  }
}
void each_release(void* arg) { Py_DECREF(static_cast<PyObject*>(arg)); }

PyObject* raw_completion(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n < 1 || n > 2) {
    PyErr_SetString(PyExc_TypeError, "completion(execs, notify=None)");
    return nullptr;
  }
  std::vector<ExecutionRef> members;
  if (!members_of(a[0], members)) return nullptr;
  auto* ws = new WaitSet(std::move(members), WaitCondition::all);
  if (n == 2 && a[1] != Py_None) ws->on_each(&each_notify, Py_NewRef(a[1]), &each_release);
  PyObject* c = PyCapsule_New(ws, "distaff.Completion", &completion_destructor);
  if (!c) delete ws;
  return c;
}

// ready(execs, mode, notify) -> handle: notify() once, where the member that satisfies `mode`
// finished (an asyncio waiter posts to its loop: _wait.py). release(handle) gives the wait up.
PyObject* raw_ready(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3 || !PyCallable_Check(a[2])) {
    PyErr_SetString(PyExc_TypeError, "ready(execs, mode, notify)");
    return nullptr;
  }
  std::vector<ExecutionRef> members;
  WaitCondition mode;
  if (!members_of(a[0], members) || !parse_mode(a[1], mode)) return nullptr;
  auto* ws = new WaitSet(std::move(members), mode);
  PyObject* c = PyCapsule_New(ws, "distaff.Completion", &completion_destructor);
  if (!c) {
    delete ws;
    return nullptr;
  }
  ws->on_ready(&each_notify, Py_NewRef(a[2]), &each_release);  // at once if it already holds
  return c;
}

// release(handle): detaches a completion() or ready() handle now — its callbacks leave the members
// still running and its notify callable is released — rather than when the handle is freed (a
// traceback may keep the frame holding it alive). Idempotent; completion_next then times out.
PyObject* raw_completion_release(PyObject*, PyObject* handle) {
  auto* ws = static_cast<WaitSet*>(PyCapsule_GetPointer(handle, "distaff.Completion"));
  if (!ws) return nullptr;
  ws->detach();
  Py_RETURN_NONE;
}

PyObject* raw_completion_next(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2) {
    PyErr_SetString(PyExc_TypeError, "completion_next(handle, timeout)");
    return nullptr;
  }
  auto* ws = static_cast<WaitSet*>(PyCapsule_GetPointer(a[0], "distaff.Completion"));
  Clock::time_point deadline;
  if (!ws || !parse_timeout(a[1], deadline)) return nullptr;
  std::int64_t idx = WaitSet::kTimedOut;
  Execution* self = interruptible_execution();
  int r = wait_sliced(
      [&](Clock::time_point d) {
        idx = ws->next_completed(d);
        return idx != WaitSet::kTimedOut;
      },
      deadline);
  if (r < 0) return nullptr;
  if (r == 1) {
    if (self && self->interrupted()) {
      raise_interrupted();
    } else {
      PyErr_SetString(PyExc_TimeoutError, "as_completed: no execution finished within the timeout");
    }
    return nullptr;
  }
  return PyLong_FromLongLong(idx);
}

// combine(execs, mode, finalizer, name) -> Execution: finished with finalizer(execs) once the
// condition holds (its return value, or the exception it raises; the sentinel COMBINE_CANCELLED
// finishes it cancelled: a gather whose last unfinished member was cancelled).
PyObject* g_combine_cancelled = nullptr;  // the sentinel, created once by init_wait

struct Combine {
  PyExecution* pe;       // strong
  PyObject* finalizer;   // strong
  PyObject* members;     // strong (the list)
  std::unique_ptr<WaitSet> ws;
};

void combine_ready(void* arg) {
  // Runs where the satisfying member finished: inside complete(), GIL held.
  auto* c = static_cast<Combine*>(arg);
  PyObject* r = PyObject_CallOneArg(c->finalizer, c->members);
  if (r == g_combine_cancelled) {
    Py_DECREF(r);
    complete(c->pe, State::cancelled, nullptr);
  } else if (r) {
    complete(c->pe, State::succeeded, r);
  } else {
    complete(c->pe, State::failed, fetch_exception());
  }
  Py_DECREF(c->pe);
  Py_DECREF(c->finalizer);
  Py_DECREF(c->members);
  // The wait-set's own state outlives this call (member callbacks hold it); freeing it here is safe.
  delete c;
}

PyObject* raw_combine(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 4) {
    PyErr_SetString(PyExc_TypeError, "combine(execs, mode, finalizer, name)");
    return nullptr;
  }
  std::vector<ExecutionRef> members;
  WaitCondition mode;
  if (!members_of(a[0], members) || !parse_mode(a[1], mode)) return nullptr;
  const char* name = PyUnicode_AsUTF8(a[3]);
  if (!name) return nullptr;
  PyExecution* pe = new_virtual_execution(name, Kind::task);
  if (!pe) return nullptr;
  for (const ExecutionRef& m : members) pe->core->add_dependency(m);
  // gather/join wait for their members (all, or all unless one fails): a body waiting on such a
  // handle that holds its own execution, or one waiting on it, gets DeadlockError, as wait() does.
  if (mode != WaitCondition::any) pe->core->awaits_members(members);
  track(pe);
  pe->deps = PyList_AsTuple(a[0]);
  if (!pe->deps) {
    Py_DECREF(pe);
    return nullptr;
  }
  auto* c = new Combine{pe, Py_NewRef(a[2]), Py_NewRef(a[0]), nullptr};
  Py_INCREF(pe);  // held by `c` until ready
  c->ws = std::make_unique<WaitSet>(std::move(members), mode);
  c->ws->on_ready(&combine_ready, c);
  return reinterpret_cast<PyObject*>(pe);
}

// promise(name) -> Execution; settle(execution, ok, value): finish a promise (False for an error).
PyObject* raw_promise(PyObject*, PyObject* name) {
  const char* s = PyUnicode_AsUTF8(name);
  if (!s) return nullptr;
  PyExecution* pe = new_virtual_execution(s, Kind::task);
  if (pe) pe->promise = 1;
  return reinterpret_cast<PyObject*>(pe);
}

// settle_external: complete() for settle(): an execution held for its body (it returned PENDING) is
// let go first, so the completion does not stop the work that settles it.
bool settle_external(PyExecution* pe, State state, PyObject* value) {
  PyObject* stopper = pe->core->done() ? nullptr : end_external(pe);
  const bool done = complete(pe, state, value);
  if (stopper) {
    Py_DECREF(stopper);
    Py_DECREF(pe);  // (complete held its own while running the callbacks)
  }
  return done;
}

PyObject* raw_settle(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3 || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "settle(execution, ok, value)");
    return nullptr;
  }
  PyExecution* pe = as_pe(a[0]);
  if (PyObject_IsTrue(a[1])) {
    if (is_execution(a[2])) {  // a body's returned Execution is followed, as for sync bodies
      if (pe->core->done()) Py_RETURN_FALSE;
      // An execution settled from outside (its body returned PENDING) follows it as a forward
      // now: the forward holds the reference the external hold did.
      PyObject* stopper = end_external(pe);
      forward_execution(pe, as_pe(a[2]));
      if (stopper) {
        Py_DECREF(stopper);
        Py_DECREF(pe);
      }
      Py_RETURN_TRUE;
    }
    return PyBool_FromLong(settle_external(pe, State::succeeded, Py_NewRef(a[2])));
  }
  if (a[2] == Py_None) return PyBool_FromLong(settle_external(pe, State::cancelled, nullptr));
  if (!PyExceptionInstance_Check(a[2])) {
    PyErr_SetString(PyExc_TypeError, "settle: the error must be an exception instance or None (cancelled)");
    return nullptr;
  }
  return PyBool_FromLong(settle_external(pe, State::failed, Py_NewRef(a[2])));
}

// check_wait(waiter, target): DeadlockError if `waiter` waiting for `target` would close a cycle of
// waits (an async def body under a retry policy awaiting the Execution it returned: _async_body.py;
// on its loop there is no current execution to check for it).
PyObject* raw_check_wait(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2 || !is_execution(a[0]) || !is_execution(a[1])) {
    PyErr_SetString(PyExc_TypeError, "check_wait(waiter, target)");
    return nullptr;
  }
  Execution& waiter = *as_pe(a[0])->core;
  Execution& target = *as_pe(a[1])->core;
  if (&target == &waiter || (!target.done() && waiter.would_deadlock(target))) {
    raise_deadlock(waiter, target);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// check_waits(waiter, execs, mode): DeadlockError if `waiter` waiting on `execs` under `mode` would
// close a cycle: wait()'s rule for an async def body (distaff.wait awaited in it: _wait.py).
PyObject* raw_check_waits(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3 || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "check_waits(waiter, execs, mode)");
    return nullptr;
  }
  std::vector<ExecutionRef> members;
  WaitCondition mode;
  if (!members_of(a[1], members) || !parse_mode(a[2], mode)) return nullptr;
  if (!check_deadlock(as_pe(a[0])->core, members, mode)) return nullptr;
  Py_RETURN_NONE;
}

// wait_edge(waiter, target[, mode]) -> token: until the token is dropped, `waiter` waits on
// `target` in the wait graph — an Execution, or a list of them waited on under `mode` (on the one
// unfinished member, or on a promise awaiting the unfinished ones; nothing for FIRST_COMPLETED).
// An async def body's await (_asyncio.py, _wait.py): its task holds no fiber whose wait could
// record it. DeadlockError, recording nothing, if the edge closes a cycle.
struct WaitEdgeToken {
  ExecutionRef waiter;
  ExecutionRef target;
};

void wait_edge_destructor(PyObject* capsule) {
  auto* t = static_cast<WaitEdgeToken*>(PyCapsule_GetPointer(capsule, "distaff.WaitEdge"));
  if (!t) {
    PyErr_Clear();
    return;
  }
  t->waiter->clear_wait_edge(*t->target);
  delete t;
}

PyObject* raw_wait_edge(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if ((n != 2 && n != 3) || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "wait_edge(waiter, target[, mode])");
    return nullptr;
  }
  ExecutionRef target;
  if (n == 2) {
    if (!is_execution(a[1])) {
      PyErr_SetString(PyExc_TypeError, "wait_edge(waiter, target): target must be an Execution");
      return nullptr;
    }
    target = ExecutionRef(as_pe(a[1])->core);
  } else {
    std::vector<ExecutionRef> members;
    WaitCondition mode;
    if (!members_of(a[1], members) || !parse_mode(a[2], mode)) return nullptr;
    if (mode == WaitCondition::any) Py_RETURN_NONE;
    std::vector<ExecutionRef> unfinished;
    for (ExecutionRef& m : members) {
      if (!m->done()) unfinished.push_back(std::move(m));
    }
    if (unfinished.empty()) Py_RETURN_NONE;
    if (unfinished.size() == 1) {
      target = std::move(unfinished.front());
    } else {
      target = Execution::promise("wait");
      target->awaits_members(unfinished);
    }
  }
  if (target->done()) Py_RETURN_NONE;
  Execution& waiter = *as_pe(a[0])->core;
  try {
    waiter.set_wait_edge(*target);
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
  auto* t = new WaitEdgeToken{ExecutionRef(&waiter), std::move(target)};
  PyObject* capsule = PyCapsule_New(t, "distaff.WaitEdge", &wait_edge_destructor);
  if (!capsule) {
    t->waiter->clear_wait_edge(*t->target);
    delete t;
  }
  return capsule;
}

// _callbacks(execution) -> int: core callbacks registered on it and not yet run (tests: a wait
// that timed out or was cancelled leaves none behind).
PyObject* raw_callbacks(PyObject*, PyObject* o) {
  if (!is_execution(o)) {
    PyErr_SetString(PyExc_TypeError, "_callbacks(execution)");
    return nullptr;
  }
  return PyLong_FromSize_t(as_pe(o)->core->callback_count());
}

PyMethodDef wait_functions[] = {
    {"_callbacks", &raw_callbacks, METH_O, "_callbacks(execution) -> core callbacks registered and not yet run"},
    {"check_wait", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_check_wait)), METH_FASTCALL,
     "check_wait(waiter, target): DeadlockError if waiter waiting for target would close a cycle"},
    {"wait_edge", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_wait_edge)), METH_FASTCALL,
     "wait_edge(waiter, target[, mode]) -> token: waiter waits on target in the wait graph until the token is dropped"},
    {"check_waits", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_check_waits)), METH_FASTCALL,
     "check_waits(waiter, execs, mode): DeadlockError if waiter waiting on execs under mode would close a cycle"},
    {"wait_set", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_wait_set)), METH_FASTCALL,
     "wait_set(execs, timeout, mode) -> (satisfied, first_failed_index)"},
    {"completion", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_completion)), METH_FASTCALL,
     "completion(execs, notify=None) -> handle for completion_next; notify() after each completion"},
    {"completion_next", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_completion_next)),
     METH_FASTCALL, "completion_next(handle, timeout) -> index, or COMPLETION_EXHAUSTED when every member was returned"},
    {"ready", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_ready)), METH_FASTCALL,
     "ready(execs, mode, notify) -> handle; notify() once when the condition holds"},
    {"release", &raw_completion_release, METH_O,
     "release(handle): give up a completion()/ready() wait now (its member callbacks are removed)"},
    {"combine", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_combine)), METH_FASTCALL,
     "combine(execs, mode, finalizer, name) -> Execution"},
    {"promise", &raw_promise, METH_O, "promise(name) -> Execution finished by settle()"},
    {"settle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_settle)), METH_FASTCALL,
     "settle(execution, ok, value) -> bool (ok with an Execution value: follow it)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_wait(PyObject* module) {
  if (!g_combine_cancelled) {
    g_combine_cancelled = PyObject_CallNoArgs(reinterpret_cast<PyObject*>(&PyBaseObject_Type));
    if (!g_combine_cancelled) return false;
  }
  if (!PendingSentinel) {
    PendingSentinel = PyObject_CallNoArgs(reinterpret_cast<PyObject*>(&PyBaseObject_Type));
    if (!PendingSentinel) return false;
  }
  return PyModule_AddFunctions(module, wait_functions) == 0 &&
         PyModule_AddObjectRef(module, "COMBINE_CANCELLED", g_combine_cancelled) == 0 &&
         PyModule_AddObjectRef(module, "PENDING", PendingSentinel) == 0;
}

}  // namespace distaff::py
