// Submitting: _core.submit (the general path the facade takes) and the Submitter, a plain task's
// `submit` in C (the W1 hot path). Both end in submit_impl, which builds the Python Execution,
// finds its parent and dependencies, and hands it to the scheduler.
//
// The Submitter: distaff.Task builds one per task when nothing needs the general Python path (no
// timeout, async body, per-call options, workflow kind or wait= by name; see Task._make_submit). A
// call does what the Python closure it replaces did, minus the interpreter: argument check, engine
// lookup, scope check, then submit_impl. Anything unusual — a workflow_id= keyword to strip, an
// active workflow scope — goes to the general Python submit, so behaviour is defined in one place.
//
// Argument checking: when the call's shape is certainly valid (positional only, count within the
// function's range), the checker function is not called at all; otherwise it is, and its TypeError
// is the one Python would give for the function itself.

#include <cstring>
#include <string>
#include <vector>

#include "bindings.hpp"

#include <structmember.h>

namespace distaff::py {

namespace {

// Past kInlineDepthMax nested inline calls a call hands off: a fiber has a fresh C stack and
// recursion budget, the main thread's are spent ~4 recursion levels per inline call (3.11).
constexpr int kInlineDepthMax = 16;

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
  // flags: bit 0 workflow, bit 1 detached (not cancelled with its parent), bit 2 here.
  const long flags = PyLong_AsLong(a[3]);
  if (flags == -1 && PyErr_Occurred()) return nullptr;
  if (!(flags & kSubmitHere)) return submit_impl(a[0], a[1], a[2], flags, a[4], a[5], a[6], a[7]);
  // Here: the body (an async body's hand-off) runs on this thread now, as the execution, and the
  // execution is returned following what the body returned (its promise). Not on a worker (its
  // fiber cannot be an inline run) nor past the inline nesting bound: queued as any other then.
  InlineStart inl;
  const bool here = !on_any_worker() && inline_depth() < kInlineDepthMax;
  PyObject* ex = submit_impl(a[0], a[1], a[2], flags & ~kSubmitHere, a[4], a[5], a[6], a[7], here ? &inl : nullptr);
  if (ex && inl.started) return run_inline_call(as_pe(ex), inl, false);
  return ex;
}

}  // namespace

PyObject* submit_impl(PyObject* capsule, PyObject* fn, PyObject* name, long flags, PyObject* wait, PyObject* args,
                      PyObject* kwargs, PyObject* wf, InlineStart* inline_start) {
  if (capsule == Py_None) return raise_forked_engine();
  EngineCore* eng = engine_from_capsule(capsule);
  if (!eng) return nullptr;
  if (eng->fork_generation != g_fork_generation) return raise_forked_engine();  // a Submitter's bound one
  if (!PyTuple_Check(args) || (kwargs != Py_None && !PyDict_Check(kwargs)) || !PyUnicode_Check(name)) {
    PyErr_SetString(PyExc_TypeError, "submit(): bad internal arguments");
    return nullptr;
  }
  // A shutting-down engine admits only children of its own running bodies (a workflow finishing
  // its steps); they are "late", and cancelled if their parent finishes first (complete()), so
  // work that keeps rescheduling itself cannot keep the engine — or the exit — waiting forever.
  bool late = false;
  const bool closing = eng->closing.load(std::memory_order_acquire);
  if (closing) {
    Execution* p = running_here();
    auto* ppe = p ? static_cast<PyExecution*>(p->payload()) : nullptr;
    late = ppe && ppe->engine == capsule && !p->done() && !(flags & kSubmitDetached);
  }
  // shutdown(cancel_pending=True or cancel_running=True) closes the scheduler at once, draining it
  // (close(true)): a late child then is work that has not started, which the shutdown cancels. It
  // is made cancelled, never queued ("stillborn"), rather than refused: the running body gets an
  // Execution, as it would a moment earlier (and see cancelled), not a ShutdownError that fails it
  // — a forwarder under concurrency= failed that way, its error logged as never retrieved.
  bool stillborn = false;
  if (eng->scheduler->closed()) {
    if (!late || !eng->scheduler->draining()) {
      PyErr_SetString(ShutdownError, "cannot submit to an engine that is shut down");
      return nullptr;
    }
    stillborn = true;
  }
  if (closing && !late) {
    PyErr_SetString(ShutdownError,
                    "cannot submit to an engine that is shutting down (only its running bodies may still "
                    "submit children, and not detached ones)");
    return nullptr;
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

  ExecutionRef core = Execution::create(std::string(name_utf8, static_cast<std::size_t>(name_len)), kind);
  PyExecution* pe = new_execution(core, capsule);
  if (!pe) return nullptr;
  PyObject* self = reinterpret_cast<PyObject*>(pe);
  pe->fn = Py_NewRef(fn);
  pe->args = Py_NewRef(args);
  pe->kwargs = kwargs == Py_None ? nullptr : Py_NewRef(kwargs);
  pe->workflow_id = wf == Py_None ? nullptr : Py_NewRef(wf);
  if (wf != Py_None && PyUnicode_Check(wf)) {  // the core's record, for observers (observe.cpp)
    Py_ssize_t n = 0;
    if (const char* w = PyUnicode_AsUTF8AndSize(wf, &n)) {
      core->set_workflow_id(std::string(w, static_cast<std::size_t>(n)));
    } else {
      PyErr_Clear();
    }
  }
  pe->late = late ? 1 : 0;
  // The body runs in a copy of the submitter's context (as an asyncio task does). An empty context
  // needs no copy: the fiber's pooled thread state starts with no context of its own (cleared at
  // release), which is the same thing, and saves a GC-tracked allocation per submit (measured:
  // with 100k queued, their copies made GC passes ~8% of W1).
  PyThreadState* ts = PyThreadState_Get();
  if (ts->context != nullptr && PyObject_Size(ts->context) != 0 && !(pe->context = PyContext_CopyCurrent())) {
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
  if (stillborn) {  // never queued: no queue reference; finished here, like a cancel before its start
    complete(pe, State::cancelled, nullptr);
    return self;
  }
  // Refused by the scheduler (a C++ exception): raised as Python's; never left unfinished: it was
  // not started, so it is cancelled.
  auto refused = [&]() -> PyObject* {
    core->set_payload(nullptr);
    translate_current_exception();
    core->finish(State::cancelled);
    Py_DECREF(self);
    return nullptr;
  };
  if (inline_start && found.empty() && gating.empty() && !late && !born_cancelled) {
    // A synchronous call that runs its body here (run_inline_call follows): no queue reference.
    try {
      if (eng->scheduler->begin_inline(*core, inline_start->saved)) {
        inline_start->started = true;
        inline_start->scheduler = eng->scheduler.get();
        return self;
      }
    } catch (...) {
      return refused();
    }
    // Closed or draining meanwhile: submitted as any other call (refused, or cancelled unstarted).
  }
  Py_INCREF(self);  // the queue's reference, released by run_execution or abandon_execution
  try {
    eng->scheduler->submit(core, gating);
  } catch (...) {
    Py_DECREF(self);  // the queue's
    return refused();
  }
  if (born_cancelled) complete(pe, State::cancelled, nullptr);
  return self;
}

namespace {

// A task's submit(), built once per task with what every call needs bound: the engine's capsule
// and its workflow-scope variable for a task bound to an engine (engine.task), or — for the
// module-level @task — the default engine as published by distaff._engine (below), so a call
// reads no attribute and calls no Python to find its engine.
struct Submitter {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* general;         // Task._submit_general (bound): the full path
  PyObject* check;           // the signature checker, or None (no inspectable signature)
  PyObject* body;            // what the fiber calls
  PyObject* name;            // the task's name (str)
  PyObject* wait;            // False or True
  PyObject* capsule;         // the bound engine's capsule (None: forked), or None for the default engine
  PyObject* scope;           // the bound engine's workflow-scope ContextVar, or None for the default engine
  PyObject* default_engine;  // distaff._engine.default_engine: the slow path of the default engine
  Py_ssize_t min_pos;        // positional calls with min_pos <= n <= max_pos need no check; kNoBound: always check
  Py_ssize_t max_pos;        // kNoBound: no upper bound (*args)
  int strip;                 // a workflow_id= keyword is distaff's, not the function's
  int bound;                 // bound to an engine (capsule, scope); else the default engine
  int inline_ok;             // call() may run the body on the calling (main) thread
};

PyObject* str_workflow_id = nullptr;
PyObject* str_scope = nullptr;
PyObject* str_capsule = nullptr;

// The default engine as distaff._engine publishes it (_publish_default) each time it creates one;
// GIL-guarded. Used while it is open and of this process; otherwise, and once use_engine() was
// ever entered (routing is per context: _default_routed), the default engine is asked for.
PyObject* g_default_capsule = nullptr;
PyObject* g_default_scope = nullptr;
EngineCore* g_default_core = nullptr;
bool g_default_routed = false;

// published_default: the published default engine's capsule and scope (new references), if it can
// take work now; false to ask distaff._engine.default_engine().
bool published_default(PyObject** capsule, PyObject** scope) {
  EngineCore* e = g_default_core;
  if (!e || g_default_routed || e->fork_generation != g_fork_generation ||
      e->closing.load(std::memory_order_acquire)) {
    return false;
  }
  *capsule = Py_NewRef(g_default_capsule);
  *scope = Py_NewRef(g_default_scope);
  return true;
}

void forget_default() {
  g_default_core = nullptr;
  Py_CLEAR(g_default_capsule);
  Py_CLEAR(g_default_scope);
}

// The engine a default-engine call goes to: its capsule and scope (new references), or false with
// a Python error (default_engine() raised: the interpreter is exiting).
bool ask_default(PyObject* default_engine, PyObject** capsule, PyObject** scope) {
  PyObject* engine = PyObject_CallNoArgs(default_engine);
  if (!engine) return false;
  *scope = PyObject_GetAttr(engine, str_scope);
  *capsule = *scope ? PyObject_GetAttr(engine, str_capsule) : nullptr;
  Py_DECREF(engine);
  if (!*capsule) {
    Py_CLEAR(*scope);
    return false;
  }
  return true;
}

// submit_or_call: submit() (sync false: the Execution) or a synchronous call (sync true: what
// result() returns; the body runs on the calling thread when it can, docs/internals/sync-calls.md).
PyObject* submit_or_call(Submitter* self, PyObject* const* args, size_t nargsf, PyObject* kwnames, bool sync);

// A synchronous call whose wait was refused (DeadlockError: the caller would wait on what waits on
// it) raises, so its caller never holds the execution it made: that one is cancelled, as an
// interrupted call's is, rather than left to fail later with an error nobody can retrieve (logged
// at exit as unobserved). The DeadlockError stays the call's exception.
void abandon_refused_call(PyObject* ex) {
  if (!PyErr_ExceptionMatches(DeadlockError)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject* done = PyObject_CallMethod(ex, "cancel", nullptr);
  if (done) {
    Py_DECREF(done);
  } else {
    PyErr_Clear();
  }
  PyErr_Restore(type, value, tb);
}

PyObject* general_then_result(PyObject* ex) {
  if (!ex) return nullptr;
  PyObject* r = execution_result(ex);
  if (!r) abandon_refused_call(ex);
  Py_DECREF(ex);
  return r;
}

PyObject* submitter_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  return submit_or_call(reinterpret_cast<Submitter*>(self_), args, nargsf, kwnames, false);
}

// call(*args, **kwargs): the task's synchronous call, f(x) outside a running event loop.
PyObject* submitter_sync_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  return submit_or_call(reinterpret_cast<Submitter*>(self_), args, nargsf, kwnames, true);
}

PyObject* submit_or_call(Submitter* self, PyObject* const* args, size_t nargsf, PyObject* kwnames, bool sync) {
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nkw && self->strip) {
    for (Py_ssize_t i = 0; i < nkw; ++i) {
      const int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(kwnames, i), str_workflow_id, Py_EQ);
      if (eq < 0) return nullptr;
      if (eq) {
        PyObject* ex = PyObject_Vectorcall(self->general, args, nargsf, kwnames);
        return sync ? general_then_result(ex) : ex;
      }
    }
  }
  if (self->check != Py_None &&
      (nkw || self->min_pos == kNoBound || nargs < self->min_pos || (self->max_pos != kNoBound && nargs > self->max_pos))) {
    PyObject* ok = PyObject_Vectorcall(self->check, args, nargsf, kwnames);
    if (!ok) return nullptr;
    Py_DECREF(ok);
  }
  PyObject *capsule, *scope;
  if (self->bound) {
    capsule = Py_NewRef(self->capsule);
    scope = Py_NewRef(self->scope);
  } else if (!published_default(&capsule, &scope) && !ask_default(self->default_engine, &capsule, &scope)) {
    return nullptr;
  }
  // An active workflow scope tags what is submitted: the general path does that.
  PyObject* scoped = nullptr;
  const int got = PyContextVar_Get(scope, nullptr, &scoped);
  Py_DECREF(scope);
  if (got < 0) {
    Py_DECREF(capsule);
    return nullptr;
  }
  const bool in_scope = scoped && scoped != Py_None;
  Py_XDECREF(scoped);
  if (in_scope) {
    Py_DECREF(capsule);
    PyObject* ex = PyObject_Vectorcall(self->general, args, nargsf, kwnames);
    return sync ? general_then_result(ex) : ex;
  }
  // Inline: the main thread's synchronous calls (docs/internals/sync-calls.md). Other threads hand
  // the body to a worker as before.
  InlineStart inl;
  // Past kInlineDepthMax nested inline calls a call hands off (see its definition).
  const bool try_inline = sync && self->inline_ok && on_python_thread_main_only() && !on_any_worker() &&
                          inline_depth() < kInlineDepthMax;
  PyObject* tuple = PyTuple_New(nargs);
  PyObject* kwargs = nkw ? PyDict_New() : Py_NewRef(Py_None);
  PyObject* result = nullptr;
  if (tuple && kwargs) {
    for (Py_ssize_t i = 0; i < nargs; ++i) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    bool ok = true;
    for (Py_ssize_t i = 0; i < nkw && ok; ++i) {
      ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) == 0;
    }
    if (ok) result = submit_impl(capsule, self->body, self->name, 0, self->wait, tuple, kwargs, Py_None,
                                 try_inline ? &inl : nullptr);
  }
  Py_XDECREF(tuple);
  Py_XDECREF(kwargs);
  Py_DECREF(capsule);
  if (!sync || !result) return result;
  if (inl.started) return run_inline_call(as_pe(result), inl);
  return general_then_result(result);
}

PyObject* submitter_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject *general, *check, *body, *name, *wait, *capsule, *scope, *default_engine;
  Py_ssize_t min_pos, max_pos;
  int strip, bound, inline_ok = 0;
  static const char* kwlist[] = {"general", "check", "min_pos", "max_pos", "body", "name", "wait",
                                 "bound", "capsule", "scope", "default_engine", "strip", "inline", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOnnOUOpOOOp|p:Submitter", const_cast<char**>(kwlist), &general,
                                   &check, &min_pos, &max_pos, &body, &name, &wait, &bound, &capsule, &scope,
                                   &default_engine, &strip, &inline_ok)) {
    return nullptr;
  }
  if (wait != Py_True && wait != Py_False) {
    PyErr_SetString(PyExc_TypeError, "Submitter: wait must be True or False");
    return nullptr;
  }
  if (bound && !PyContextVar_CheckExact(scope)) {
    PyErr_SetString(PyExc_TypeError, "Submitter: a bound engine's scope must be a ContextVar");
    return nullptr;
  }
  auto* self = reinterpret_cast<Submitter*>(type->tp_alloc(type, 0));
  if (!self) return nullptr;
  self->vectorcall = &submitter_call;
  self->general = Py_NewRef(general);
  self->check = Py_NewRef(check);
  self->body = Py_NewRef(body);
  self->name = Py_NewRef(name);
  self->wait = Py_NewRef(wait);
  self->bound = bound;
  self->capsule = Py_NewRef(capsule);
  self->scope = Py_NewRef(scope);
  self->default_engine = Py_NewRef(default_engine);
  self->min_pos = min_pos;
  self->max_pos = max_pos;
  self->strip = strip;
  self->inline_ok = inline_ok;
  return reinterpret_cast<PyObject*>(self);
}

int submitter_traverse(PyObject* self_, visitproc visit, void* arg) {
  auto* self = reinterpret_cast<Submitter*>(self_);
  Py_VISIT(Py_TYPE(self_));
  Py_VISIT(self->general);
  Py_VISIT(self->check);
  Py_VISIT(self->body);
  Py_VISIT(self->name);
  Py_VISIT(self->wait);
  Py_VISIT(self->capsule);
  Py_VISIT(self->scope);
  Py_VISIT(self->default_engine);
  return 0;
}

int submitter_clear(PyObject* self_) {
  auto* self = reinterpret_cast<Submitter*>(self_);
  Py_CLEAR(self->general);
  Py_CLEAR(self->check);
  Py_CLEAR(self->body);
  Py_CLEAR(self->name);
  Py_CLEAR(self->wait);
  Py_CLEAR(self->capsule);
  Py_CLEAR(self->scope);
  Py_CLEAR(self->default_engine);
  return 0;
}

void submitter_dealloc(PyObject* self_) {
  PyTypeObject* type = Py_TYPE(self_);
  PyObject_GC_UnTrack(self_);
  submitter_clear(self_);
  type->tp_free(self_);
  Py_DECREF(type);
}

PyObject* submitter_doc(PyObject* self_, void*) {
  auto* self = reinterpret_cast<Submitter*>(self_);
  if (!self->general) Py_RETURN_NONE;
  return PyObject_GetAttrString(self->general, "__doc__");
}

PyObject* submitter_repr(PyObject* self_) {
  auto* self = reinterpret_cast<Submitter*>(self_);
  return PyUnicode_FromFormat("<distaff submit of %R>", self->name ? self->name : Py_None);
}

PyGetSetDef submitter_getset[] = {
    {"__doc__", &submitter_doc, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMethodDef submitter_methods[] = {
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&submitter_sync_call)),
     METH_FASTCALL | METH_KEYWORDS,
     "call(*args, **kwargs)\n--\n\nThe task's synchronous call: what submit(*args, **kwargs).result() returns; on "
     "the main thread the body runs there (docs/internals/sync-calls.md)."},
    {nullptr, nullptr, 0, nullptr}};

PyMemberDef submitter_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Submitter, vectorcall), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot submitter_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(&submitter_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(&submitter_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(&submitter_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(&submitter_clear)},
    {Py_tp_call, reinterpret_cast<void*>(&PyVectorcall_Call)},
    {Py_tp_repr, reinterpret_cast<void*>(&submitter_repr)},
    {Py_tp_getset, submitter_getset},
    {Py_tp_members, submitter_members},
    {Py_tp_methods, submitter_methods},
    {0, nullptr}};

PyType_Spec submitter_spec = {"distaff._core.Submitter", sizeof(Submitter), 0,
                              Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, submitter_slots};

// _publish_default(capsule, scope): the default engine distaff._engine just created (None, None:
// there is none now).
PyObject* raw_publish_default(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2) {
    PyErr_SetString(PyExc_TypeError, "_publish_default(capsule, scope) takes 2 arguments");
    return nullptr;
  }
  if (a[0] == Py_None) {
    forget_default();
    Py_RETURN_NONE;
  }
  EngineCore* e = engine_from_capsule(a[0]);
  if (!e) return nullptr;
  if (!PyContextVar_CheckExact(a[1])) {
    PyErr_SetString(PyExc_TypeError, "_publish_default: scope must be a ContextVar");
    return nullptr;
  }
  forget_default();
  if (!g_default_routed) {
    g_default_capsule = Py_NewRef(a[0]);
    g_default_scope = Py_NewRef(a[1]);
    g_default_core = e;
  }
  Py_RETURN_NONE;
}

// _default_routed(): use_engine() was entered: which engine the default is now depends on the
// context, so every default-engine call asks distaff._engine.default_engine() from now on.
PyObject* raw_default_routed(PyObject*, PyObject*) {
  g_default_routed = true;
  forget_default();
  Py_RETURN_NONE;
}

PyMethodDef submit_functions[] = {
    {"submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_submit)), METH_FASTCALL,
     "submit(engine, fn, name, flags, wait, args, kwargs, workflow_id) -> Execution"},
    {"_publish_default", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_publish_default)),
     METH_FASTCALL, "_publish_default(capsule, scope): the default engine, for Submitter"},
    {"_default_routed", &raw_default_routed, METH_NOARGS, "use_engine() is in use: Submitter asks default_engine()"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

void submit_after_fork() {
  // The parent's engine: leaked, not released (its handle would join threads that do not exist).
  g_default_core = nullptr;
  g_default_capsule = nullptr;
  g_default_scope = nullptr;
}

bool init_submit(PyObject* module) {
  if (PyModule_AddFunctions(module, submit_functions) < 0) return false;
  str_workflow_id = PyUnicode_InternFromString("workflow_id");
  str_scope = PyUnicode_InternFromString("_scope");
  str_capsule = PyUnicode_InternFromString("_capsule");
  if (!str_workflow_id || !str_scope || !str_capsule) return false;
  PyObject* type = PyType_FromModuleAndSpec(module, &submitter_spec, nullptr);
  if (!type) return false;
  const int rc = PyModule_AddObjectRef(module, "Submitter", type);
  Py_DECREF(type);
  return rc == 0;
}

}  // namespace distaff::py
