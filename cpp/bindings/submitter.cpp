// Submitter: the `submit` of a plain task, in C (the W1 hot path).
//
// distaff.Task builds one per task when nothing needs the general Python path (no timeout, async
// body, per-call options, workflow kind or wait= by name; see Task._make_submit). A call does what
// the Python closure it replaces did, minus the interpreter: argument check, engine lookup, scope
// check, then submit_impl. Anything unusual — a workflow_id= keyword to strip, an active workflow
// scope — goes to the general Python submit, so behaviour is defined in one place.
//
// Argument checking: when the call's shape is certainly valid (positional only, count within the
// function's range), the checker function is not called at all; otherwise it is, and its TypeError
// is the one Python would give for the function itself.

#include "bindings.hpp"

#include <structmember.h>

namespace distaff::py {

namespace {

struct Submitter {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* general;         // Task._submit_general (bound): the full path
  PyObject* check;           // the signature checker, or None (no inspectable signature)
  PyObject* body;            // what the fiber calls
  PyObject* name;            // the task's name (str)
  PyObject* wait;            // False or True
  PyObject* engine;          // the Engine, or None for the default engine
  PyObject* default_engine;  // distaff._engine.default_engine
  Py_ssize_t min_pos;        // positional calls with min_pos <= n <= max_pos need no check; kNoBound: always check
  Py_ssize_t max_pos;        // kNoBound: no upper bound (*args)
  int strip;                 // a workflow_id= keyword is distaff's, not the function's
};

PyObject* str_workflow_id = nullptr;
PyObject* str_scope = nullptr;
PyObject* str_capsule = nullptr;

PyObject* submitter_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<Submitter*>(self_);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nkw && self->strip) {
    for (Py_ssize_t i = 0; i < nkw; ++i) {
      const int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(kwnames, i), str_workflow_id, Py_EQ);
      if (eq < 0) return nullptr;
      if (eq) return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
    }
  }
  if (self->check != Py_None &&
      (nkw || self->min_pos == kNoBound || nargs < self->min_pos || (self->max_pos != kNoBound && nargs > self->max_pos))) {
    PyObject* ok = PyObject_Vectorcall(self->check, args, nargsf, kwnames);
    if (!ok) return nullptr;
    Py_DECREF(ok);
  }
  PyObject* engine = self->engine != Py_None ? Py_NewRef(self->engine) : PyObject_CallNoArgs(self->default_engine);
  if (!engine) return nullptr;
  // An active workflow scope tags what is submitted: the general path does that.
  PyObject* scope = PyObject_GetAttr(engine, str_scope);
  if (!scope) {
    Py_DECREF(engine);
    return nullptr;
  }
  PyObject* scoped = nullptr;
  const int got = PyContextVar_Get(scope, nullptr, &scoped);
  Py_DECREF(scope);
  if (got < 0) {
    Py_DECREF(engine);
    return nullptr;
  }
  const bool in_scope = scoped && scoped != Py_None;
  Py_XDECREF(scoped);
  if (in_scope) {
    Py_DECREF(engine);
    return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
  }
  PyObject* capsule = PyObject_GetAttr(engine, str_capsule);
  Py_DECREF(engine);
  if (!capsule) return nullptr;
  PyObject* tuple = PyTuple_New(nargs);
  PyObject* kwargs = nkw ? PyDict_New() : Py_NewRef(Py_None);
  PyObject* result = nullptr;
  if (tuple && kwargs) {
    for (Py_ssize_t i = 0; i < nargs; ++i) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    bool ok = true;
    for (Py_ssize_t i = 0; i < nkw && ok; ++i) {
      ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) == 0;
    }
    if (ok) result = submit_impl(capsule, self->body, self->name, 0, self->wait, tuple, kwargs, Py_None);
  }
  Py_XDECREF(tuple);
  Py_XDECREF(kwargs);
  Py_DECREF(capsule);
  return result;
}

PyObject* submitter_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject *general, *check, *body, *name, *wait, *engine, *default_engine;
  Py_ssize_t min_pos, max_pos;
  int strip;
  static const char* kwlist[] = {"general", "check", "min_pos", "max_pos", "body", "name", "wait",
                                 "engine", "default_engine", "strip", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOnnOUOOOp:Submitter", const_cast<char**>(kwlist), &general,
                                   &check, &min_pos, &max_pos, &body, &name, &wait, &engine, &default_engine,
                                   &strip)) {
    return nullptr;
  }
  if (wait != Py_True && wait != Py_False) {
    PyErr_SetString(PyExc_TypeError, "Submitter: wait must be True or False");
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
  self->engine = Py_NewRef(engine);
  self->default_engine = Py_NewRef(default_engine);
  self->min_pos = min_pos;
  self->max_pos = max_pos;
  self->strip = strip;
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
  Py_VISIT(self->engine);
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
  Py_CLEAR(self->engine);
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
    {0, nullptr}};

PyType_Spec submitter_spec = {"distaff._core.Submitter", sizeof(Submitter), 0,
                              Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, submitter_slots};

}  // namespace

bool init_submitter(PyObject* module) {
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
