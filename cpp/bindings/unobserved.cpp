// Unobserved failures: an execution that failed and was freed without anyone retrieving its error
// is reported (logger "distaff" through distaff._errors.log_unobserved; on stderr once the
// interpreter finalizes).

#include <cstdio>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

namespace {

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
    report_error_keeping_signals(UnobservedHook);
  }
  return 0;
}

PyObject* raw_drain_unobserved(PyObject*, PyObject*) {
  drain_unobserved(nullptr);
  Py_RETURN_NONE;
}

PyMethodDef unobserved_functions[] = {
    {"_drain_unobserved", &raw_drain_unobserved, METH_NOARGS, "log the queued unobserved failures now"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// A forward cycle (bodies returning executions that follow each other back) fails every execution
// in it with one DeadlockError: the forward that closed the cycle raised it, and each execution
// following that one fails with the same object. It is one failure, said once: retrieved from any
// of them, none is reported; retrieved from none, the first one freed reports it. The shared state
// lives on the exception, as kCycleSeen: False until it is retrieved or reported, then True.
constexpr const char* kCycleSeen = "_distaff_cycle_seen";

void mark_cycle_error(PyObject* exc) {
  if (!exc || !PyErr_GivenExceptionMatches(exc, DeadlockError)) return;  // a MemoryError may be shared
  if (PyObject_SetAttrString(exc, kCycleSeen, Py_False) < 0) PyErr_Clear();
}

// cycle_error_seen: true if `exc` is a cycle's error already retrieved or reported; marks it seen.
bool cycle_error_seen(PyObject* exc) {
  if (!exc || !PyObject_HasAttrString(exc, kCycleSeen)) return false;
  PyObject* v = PyObject_GetAttrString(exc, kCycleSeen);
  const bool seen = v == Py_True;
  Py_XDECREF(v);
  if (!v) PyErr_Clear();
  if (!seen && PyObject_SetAttrString(exc, kCycleSeen, Py_True) < 0) PyErr_Clear();
  return seen;
}

void report_unobserved(PyExecution* pe) {
  // Only a failure nobody retrieved: result() and exception() set `observed`.
  if (!pe->core || pe->observed || !pe->exc || pe->core->state() != State::failed) return;
  SavedError saved;
  if (cycle_error_seen(pe->exc)) return;
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
}

void drain_unobserved_now() {
  if (g_unobserved) drain_unobserved(nullptr);
}

bool init_unobserved(PyObject* module) { return PyModule_AddFunctions(module, unobserved_functions) == 0; }

}  // namespace distaff::py
