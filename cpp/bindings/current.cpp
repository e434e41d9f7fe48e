// Which execution is running here: the current execution of a fiber, of an async def body on an
// event loop, and of a done-callback (the parent of what each of them submits).

#include <utility>
#include <vector>

#include "bindings.hpp"

namespace distaff::py {

namespace {
// The execution whose async def body runs in the current asyncio task (set by the facade's
// _cancellable on the loop): current_execution() and the parent of what that body submits.
PyObject* g_async_current = nullptr;

// The parent a done-callback's submissions get: the execution whose code registered the callback
// (or none), not whichever fiber happened to finish the execution. One entry per callback running
// now, keyed by the thread state it runs on (a callback may suspend its fiber, and other fibers of
// the worker must not inherit its override). GIL held; almost always empty.
std::vector<std::pair<PyThreadState*, Execution*>> g_callback_parents;

unsigned long g_main_thread_ident = 0;
}  // namespace

Execution* async_current() {
  PyObject* v = nullptr;
  if (!g_async_current || PyContextVar_Get(g_async_current, nullptr, &v) < 0) {
    PyErr_Clear();
    return nullptr;
  }
  if (!v) return nullptr;
  Execution* e = Py_TYPE(v) == ExecutionType ? reinterpret_cast<PyExecution*>(v)->core : nullptr;
  Py_DECREF(v);  // the context keeps it alive while it is the value
  return e;
}

Execution* running_here() {
  Execution* e = current_execution();  // the fiber's, or the inline run's on this thread
  if (!e) return async_current();
  // Both: an async body's task on a loop that a sync body runs (asyncio.run inside it), or a
  // body whose context was copied from an async body's task (submitted from there). The one made
  // later is the one running here: an async body started inside the sync body's run was created
  // after it; an execution submitted from an async body's task, after that body. (Ids are
  // allocated in creation order, across engines.) An outsider's find (session 23): inside
  // asyncio.run in a sync body, the async bodies' current_execution() was the sync body, and the
  // children they submitted were the sync body's.
  Execution* a = async_current();
  return a && a->id() > e->id() ? a : e;
}

Execution* submit_parent() {
  if (!g_callback_parents.empty()) {
    PyThreadState* ts = PyThreadState_Get();
    for (std::size_t i = g_callback_parents.size(); i-- > 0;) {
      if (g_callback_parents[i].first == ts) return g_callback_parents[i].second;
    }
  }
  return running_here();
}

void push_callback_parent(PyThreadState* ts, Execution* parent) { g_callback_parents.emplace_back(ts, parent); }

void pop_callback_parent(PyThreadState* ts) {
  // Not pop_back: a callback that suspended its fiber may finish after one that started later on
  // another fiber. Per thread state the entries nest, so the last one of this state is ours.
  for (std::size_t i = g_callback_parents.size(); i-- > 0;) {
    if (g_callback_parents[i].first == ts) {
      g_callback_parents.erase(g_callback_parents.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
}

namespace {
// Bodies of synchronous calls running on this (plain) thread now, nested (run_inline_call, run.cpp):
// the schedulers they belong to, innermost last.
thread_local int tl_inline_depth = 0;
thread_local std::vector<const Scheduler*> tl_inline_schedulers;
}  // namespace

// The exception a signal handler raised in a distaff wait of an inline body (wait_sliced): the
// inline calls it leaves treat it as an interruption (run_inline_call). Main thread, GIL held;
// dropped when the outermost inline call returns.
PyObject* g_inline_signal_exc = nullptr;

bool inline_here() { return tl_inline_depth != 0; }
int inline_depth() { return tl_inline_depth; }
void enter_inline(const Scheduler* s) {
  tl_inline_schedulers.push_back(s);
  ++tl_inline_depth;
}
void leave_inline() {
  --tl_inline_depth;
  tl_inline_schedulers.pop_back();
  if (tl_inline_depth == 0) Py_CLEAR(g_inline_signal_exc);
}

void note_inline_signal_exception() {
  if (tl_inline_depth == 0 || !PyErr_Occurred()) return;
  PyObject* e = fetch_exception();
  if (!e) return;
  Py_XSETREF(g_inline_signal_exc, Py_NewRef(e));
  raise_stored(e);
  Py_DECREF(e);
}

bool is_inline_signal_exception(PyObject* exc) { return exc && exc == g_inline_signal_exc; }
bool runs_own_body_here(const Scheduler* s) {
  if (s->on_worker()) return true;
  for (const Scheduler* x : tl_inline_schedulers) {
    if (x == s) return true;
  }
  return false;
}

bool on_main_thread() {
  // A body run inline on the main thread (a synchronous call) is on the main thread too: its waits
  // keep the 20 ms slices that run signal handlers (Ctrl-C).
  return (current_execution() == nullptr || tl_inline_depth != 0) && PyThread_get_thread_ident() == g_main_thread_ident;
}

bool on_python_thread_main_only() { return PyThread_get_thread_ident() == g_main_thread_ident; }

void main_thread_after_fork() { g_main_thread_ident = PyThread_get_thread_ident(); }

bool on_python_main_thread() { return PyThread_get_thread_ident() == g_main_thread_ident || on_forked_program(); }

namespace {

PyObject* raw_current(PyObject*, PyObject*) {
  Execution* cur = running_here();
  if (!cur || !cur->payload()) Py_RETURN_NONE;
  return Py_NewRef(static_cast<PyObject*>(cur->payload()));
}

// _import_ident(): the "thread" identity importlib's module locks see (distaff/_imports.py). Every
// fiber of a worker shares the worker's OS thread id, so a module lock keyed by it lets a second
// fiber into a module another fiber is still executing. On a fiber: minus its thread state's id
// (unique among live states, renewed on reuse; negative, so never an OS thread id). Elsewhere: the
// OS thread id, as _thread.get_ident() returns it.
PyObject* raw_import_ident(PyObject*, PyObject*) {
  if (current_execution() && !tl_inline_depth) {  // (a body run inline has its thread to itself)
    return PyLong_FromLongLong(-static_cast<long long>(PyThreadState_GetID(PyThreadState_Get())));
  }
  return PyLong_FromUnsignedLong(PyThread_get_thread_ident());
}

PyMethodDef current_functions[] = {
    {"current_execution", &raw_current, METH_NOARGS,
     "current_execution() -> Execution | None: the execution whose body is running here."},
    {"_import_ident", &raw_import_ident, METH_NOARGS,
     "_import_ident() -> int: the thread identity importlib's module locks use (per fiber on a worker)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_current(PyObject* module) {
  g_async_current = PyContextVar_New("distaff_async_current", nullptr);
  if (!g_async_current || PyModule_AddObjectRef(module, "_async_current", g_async_current) < 0) return false;
  PyObject* threading = PyImport_ImportModule("threading");
  if (!threading) return false;
  PyObject* main = PyObject_CallMethod(threading, "main_thread", nullptr);
  Py_DECREF(threading);
  if (!main) return false;
  PyObject* ident = PyObject_GetAttrString(main, "ident");
  Py_DECREF(main);
  if (!ident) return false;
  g_main_thread_ident = PyLong_AsUnsignedLong(ident);
  Py_DECREF(ident);
  return PyModule_AddFunctions(module, current_functions) == 0;
}

}  // namespace distaff::py
