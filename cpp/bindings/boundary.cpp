// The numbers that cross the Python<->C boundary, as Python enums built from the C++ ones (see
// bindings.hpp): one definition, the same names on both sides.

#include <utility>
#include <vector>

#include "bindings.hpp"
#include "distaff/wait_set.hpp"

namespace distaff::py {

namespace {

// add_enum: module.<name> = enum.<base>(name, [(member, value), ...], module="distaff._core").
bool add_enum(PyObject* module, PyObject* enum_mod, const char* base, const char* name,
              const std::vector<std::pair<const char*, long>>& members) {
  PyObject* items = PyList_New(0);
  if (!items) return false;
  for (const auto& [member, value] : members) {
    PyObject* pair = Py_BuildValue("(sl)", member, value);
    if (!pair || PyList_Append(items, pair) < 0) {
      Py_XDECREF(pair);
      Py_DECREF(items);
      return false;
    }
    Py_DECREF(pair);
  }
  PyObject* factory = PyObject_GetAttrString(enum_mod, base);
  PyObject* args = factory ? Py_BuildValue("(sO)", name, items) : nullptr;
  PyObject* kwargs = args ? Py_BuildValue("{ss}", "module", "distaff._core") : nullptr;
  PyObject* cls = kwargs ? PyObject_Call(factory, args, kwargs) : nullptr;
  Py_XDECREF(kwargs);
  Py_XDECREF(args);
  Py_XDECREF(factory);
  Py_DECREF(items);
  if (!cls) return false;
  return PyModule_AddObject(module, name, cls) == 0 || (Py_DECREF(cls), false);
}

constexpr long value(WaitCondition c) { return static_cast<long>(c); }
constexpr long value(Seconds s) { return static_cast<long>(s); }

}  // namespace

bool init_boundary(PyObject* module) {
  PyObject* enum_mod = PyImport_ImportModule("enum");
  if (!enum_mod) return false;
  const bool ok =
      add_enum(module, enum_mod, "IntFlag", "SubmitFlag", {{"WORKFLOW", kSubmitWorkflow}, {"DETACHED", kSubmitDetached}, {"HERE", kSubmitHere}}) &&
      add_enum(module, enum_mod, "IntEnum", "ShutdownCancel",
               {{"NONE", value_of(ShutdownCancel::none)},
                {"PENDING", value_of(ShutdownCancel::pending)},
                {"RUNNING", value_of(ShutdownCancel::running)}}) &&
      add_enum(module, enum_mod, "IntEnum", "WaitFor",
               {{"ALL_COMPLETED", value(WaitCondition::all)},
                {"FIRST_COMPLETED", value(WaitCondition::any)},
                {"FIRST_EXCEPTION", value(WaitCondition::first_exception)}}) &&
      add_enum(module, enum_mod, "IntEnum", "SecondsKind",
               {{"WAIT", value(Seconds::wait)},
                {"OPTION", value(Seconds::option)},
                {"LENGTH", value(Seconds::length)},
                {"CAP", value(Seconds::cap)},
                {"DELAY", value(Seconds::delay)},
                {"FACTOR", value(Seconds::factor)}}) &&
      PyModule_AddIntConstant(module, "NO_BOUND", kNoBound) == 0 &&
      PyModule_AddIntConstant(module, "COMPLETION_EXHAUSTED", static_cast<long>(WaitSet::kExhausted)) == 0;
  Py_DECREF(enum_mod);
  return ok;
}

}  // namespace distaff::py
