// fork(): what a forked child inherits and cannot use — the parent's engines (their workers do not
// exist here) and its unfinished executions (they can never finish here) — and the reset of the
// process-wide state the bindings keep (the facade calls _after_fork_in_child from os.register_at_fork).

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "distaff/detail/idle_signals.hpp"

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

unsigned g_fork_generation = 0;

namespace {
// The process's name (its main thread's, /proc/self/comm) when distaff was imported: a process
// forked from a worker, whose only thread would keep the worker's name (distaff-w<N>), gets it back.
std::string g_process_name;
}  // namespace
PyExecution* g_forked_body = nullptr;

bool on_forked_program() { return g_forked_body != nullptr && current_execution() == g_forked_body->core; }

// end_forked_body: the copy of a body in the process it forked has ended. The process ends as a
// program whose main code this was: distaff._engine._end_forked_body prints an uncaught error,
// waits for the engines made in this process and flushes the Python streams, and says the exit
// status (sys.exit's, 0 after a return, 1 after an error); C stdio is flushed; no atexit handler
// runs, as in the child of a forked thread. Never returns: the fiber has no worker loop to go back to.
[[noreturn]] void end_forked_body(PyObject* result) {
  PyExecution* pe = g_forked_body;
  PyObject* exc = result ? nullptr : fetch_exception();
  Py_XDECREF(result);
  if (exc && !PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) && pe) add_task_note(exc, *pe->core);
  int status = exc ? 1 : 0;
  PyObject* mod = PyImport_ImportModule("distaff._engine");
  PyObject* r = mod ? PyObject_CallMethod(mod, "_end_forked_body", "O", exc ? exc : Py_None) : nullptr;
  if (r && PyLong_Check(r)) {
    const long v = PyLong_AsLong(r);
    status = v == -1 && PyErr_Occurred() ? 1 : static_cast<int>(v & 0xff);
  }
  if (PyErr_Occurred()) {  // the hook itself failed: say so (never PyErr_Print's exit for SystemExit)
    status = 1;
    PyErr_WriteUnraisable(mod);
  }
  Py_XDECREF(r);
  Py_XDECREF(mod);
  Py_XDECREF(exc);
  std::fflush(nullptr);
  ::_exit(status);
}

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
  // Forked by a body on a worker fiber (or by the copy of one, again): this fiber is the child's
  // program now. Its worker's loop and the parent's other fibers never run here, and the worker's
  // interpreter states are gone (CPython deleted every thread state but this one), so the thread
  // becomes a plain thread that runs one fiber; when the body ends, the process ends
  // (end_forked_body, from run_execution).
  // Forked from a worker thread (a body's os.fork(), multiprocessing's fork start method): the
  // child's one thread is its main thread now and is named as the process was, not distaff-w<N>
  // (ps, pgrep and killall go by that name: an outsider's find).
  if (on_any_worker() && !g_process_name.empty()) distaff::detail::name_this_thread(g_process_name.c_str());
  // Forked from a plain thread (not a body's fiber, whose copy is the child's program:
  // on_forked_program): that thread is the child's main thread, where its Ctrl-C is raised, and
  // where its synchronous calls run inline.
  if (!on_any_worker() && !g_forked_body) main_thread_after_fork();
  if (Execution* self = current_execution(); self && (on_any_worker() || g_forked_body)) {
    if (keep_only_current_fiber()) {
      forget_worker_after_fork();
      g_forked_body = static_cast<PyExecution*>(self->payload());
    }
  }
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

bool init_fork(PyObject* module) {
  std::ifstream comm("/proc/self/comm");
  std::getline(comm, g_process_name);
  return PyModule_AddFunctions(module, fork_functions) == 0;
}

}  // namespace distaff::py
