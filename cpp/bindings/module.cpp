// distaff._core: registers each concept's types and functions (one file per concept; the table in
// docs/internals/bindings.md says which), and the facade's hooks. Nothing else lives here.

#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace pyb = pybind11;
using namespace distaff::py;

namespace {

// _set_hooks(await_hook, callback_error_hook, loop_wait_hook=None, coroutine_hook=None): the
// facade's Python functions the bindings call (distaff/_asyncio.py, distaff/_errors.py,
// distaff/_async_body.py).
PyObject* raw_set_hooks(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n < 2 || n > 4) {
    PyErr_SetString(PyExc_TypeError,
                    "_set_hooks(await_hook, callback_error_hook, loop_wait_hook=None, coroutine_hook=None)");
    return nullptr;
  }
  Py_XSETREF(AsyncAwaitHook, Py_NewRef(a[0]));
  Py_XSETREF(CallbackErrorHook, Py_NewRef(a[1]));
  if (n >= 3) Py_XSETREF(LoopWaitHook, a[2] == Py_None ? nullptr : Py_NewRef(a[2]));
  if (n >= 4) Py_XSETREF(ReturnedCoroutineHook, a[3] == Py_None ? nullptr : Py_NewRef(a[3]));
  Py_RETURN_NONE;
}

PyMethodDef module_functions[] = {
    {"_set_hooks", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_set_hooks)), METH_FASTCALL,
     "_set_hooks(await_hook, callback_error_hook, loop_wait_hook=None, coroutine_hook=None)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "distaff's native engine (private: use the distaff package)";
  install_switch_hooks();
  PyObject* mod = m.ptr();
  const bool ok = init_errors(mod) && init_current(mod) && init_execution_type(mod) && init_submit(mod) &&
                  init_waiting(mod) && init_wait(mod) && init_cancel(mod) && init_unobserved(mod) &&
                  init_fork(mod) && init_engine(mod) && init_lifecycle(mod) && init_boundary(mod) && init_observe(mod) &&
                  PyModule_AddFunctions(mod, module_functions) == 0;
  if (!ok) throw pyb::error_already_set();
}
