// fork(): what a forked child inherits and cannot use — the parent's engines (their workers do not
// exist here) and its unfinished executions (they can never finish here) — and the reset of the
// process-wide state the bindings keep (the facade calls _after_fork_in_child from os.register_at_fork).

#include "bindings.hpp"

namespace distaff::py {

unsigned g_fork_generation = 0;

PyObject* raise_forked_engine() {
  PyErr_SetString(ShutdownError,
                  "this engine was created before fork() in the parent process; its workers do not exist "
                  "here: create a new Engine (module-level tasks get a new default engine automatically)");
  return nullptr;
}

PyObject* raise_forked_execution(const Execution& ex) {
  PyErr_Format(ShutdownError,
               "execution %llu (%s) was unfinished when this process was forked; it can never finish here",
               static_cast<unsigned long long>(ex.id()), ex.name().c_str());
  return nullptr;
}

namespace {

// _after_fork_in_child(): the threads of the parent (timer, join threads) and the fibers of its
// bodies do not exist here: forget them, and start a new fork generation.
PyObject* raw_after_fork(PyObject*, PyObject*) {
  timer_after_fork();
  running_after_fork();
  submit_after_fork();
  ++g_fork_generation;
  lifecycle_after_fork();
  Py_RETURN_NONE;
}

PyMethodDef fork_functions[] = {
    {"_after_fork_in_child", &raw_after_fork, METH_NOARGS, "reset process-wide state in a forked child"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_fork(PyObject* module) { return PyModule_AddFunctions(module, fork_functions) == 0; }

}  // namespace distaff::py
