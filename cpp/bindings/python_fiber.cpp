#include "python_fiber.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

#include "distaff/execution.hpp"

namespace distaff::py {

namespace {

// Ids given to pooled thread states on reuse. CPython hands out ids from 1 upward; starting far
// above keeps ours from ever colliding with a real thread's id.
std::atomic<std::uint64_t> g_next_tstate_id{std::uint64_t(1) << 62};

struct WorkerPy {
  PyThreadState* base = nullptr;              // the worker's own state (clears pooled ones)
  std::vector<PyThreadState*> pool;           // cleared fiber states, ready for reuse
  std::size_t stack_size = 0;
  // True while this worker holds the GIL with `base` current, i.e. between two fibers. A busy
  // worker keeps the GIL across fiber switches (a PyThreadState_Swap, ~20 ns) instead of handing it
  // to the waiting main thread and back after every task (lock-step GIL, 3x slower in the spike);
  // it gives it up when its OS thread is about to block (release_held_gil, from the fiber
  // algorithm's suspend_until) or when Python's switch interval asks from inside a body.
  bool holds_gil = false;
};
thread_local WorkerPy* tl_worker_py = nullptr;

PyInterpreterState* g_interp = nullptr;

// make_current: makes `ts` this thread's current state, taking the GIL unless the worker holds it.
void make_current(WorkerPy* w, PyThreadState* ts) {
  if (w && w->holds_gil) {
    w->holds_gil = false;
    PyThreadState_Swap(ts);
  } else {
    PyEval_RestoreThread(ts);
  }
  distaff_bind_gilstate(ts);
}

// park_on_base: called by a fiber that gives up the interpreter on a worker: `base` becomes current
// and the worker keeps the GIL until its thread would block.
void park_on_base(WorkerPy* w) {
  PyThreadState_Swap(w->base);
  distaff_bind_gilstate(w->base);
  w->holds_gil = true;
}

void* on_suspend() {
  // Called with the GIL held by this fiber's (or thread's) state, right before it parks.
  WorkerPy* w = tl_worker_py;
  if (w && PyThreadState_Get() != w->base) {
    PyThreadState* ts = PyThreadState_Get();
    park_on_base(w);
    return ts;
  }
  return PyEval_SaveThread();
}

void on_resume(void* token) {
  auto* ts = static_cast<PyThreadState*>(token);
  if (!ts) return;
  make_current(tl_worker_py, ts);
}

#if PY_VERSION_HEX >= 0x030C0000
int c_recursion_budget(std::size_t stack_size) {
  // Measured: ~512 bytes of C stack per C-level recursion step, 32 KiB reserved for the rest.
  const std::size_t reserve = 32 * 1024;
  if (stack_size <= reserve) return 50;
  return static_cast<int>((stack_size - reserve) / 512);
}
#endif

void prepare_for_reuse(PyThreadState* ts) {
  // Called with the GIL held and `ts` not current.
  PyThreadState_Clear(ts);
  ts->id = g_next_tstate_id.fetch_add(1, std::memory_order_relaxed);
  // A body that ended through an asynchronous exception (cancel, timeout) can leave the depth
  // counter off; the next fiber starts from the top, like a new thread.
#if PY_VERSION_HEX >= 0x030C0000
  ts->py_recursion_remaining = ts->py_recursion_limit;
#else
  ts->recursion_remaining = ts->recursion_limit;
#endif
#if PY_VERSION_HEX >= 0x030C0000
  ts->_status.cleared = 0;
  ts->_status.finalizing = 0;
#endif
}

}  // namespace

bool on_any_worker() { return tl_worker_py != nullptr; }

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

void install_switch_hooks() {
  g_interp = PyInterpreterState_Get();
  distaff::set_switch_hooks(SwitchHooks{&on_suspend, &on_resume});
}

void release_held_gil() {
  WorkerPy* w = tl_worker_py;
  if (w && w->holds_gil) {
    w->holds_gil = false;
    PyEval_SaveThread();  // saves `base`
  }
}

void worker_started(std::size_t stack_size) {
  auto* w = new WorkerPy;
  w->stack_size = stack_size;
  w->base = PyThreadState_New(g_interp);
  tl_worker_py = w;
}

void worker_stopped() {
  WorkerPy* w = tl_worker_py;
  tl_worker_py = nullptr;
  if (!w) return;
  if (interpreter_finalizing()) {
    // Rule 7: once finalisation has begun, taking the GIL may hang or kill this thread. Leak.
    delete w;
    return;
  }
  if (!w->holds_gil) PyEval_RestoreThread(w->base);
  w->holds_gil = false;
  for (PyThreadState* ts : w->pool) {
    PyThreadState_Clear(ts);
    PyThreadState_Delete(ts);
  }
  PyThreadState_Clear(w->base);
  PyThreadState_DeleteCurrent();  // releases the GIL
  delete w;
}

void worker_idle() {
  // Keep a modest cache when idle; peak concurrency is cached while busy (a cap made fib(20) 5x
  // slower in the spike). Trimming needs the GIL, so only pay for it when there is much to trim.
  WorkerPy* w = tl_worker_py;
  constexpr std::size_t keep = 256;
  if (!w || w->pool.size() <= keep * 2 || interpreter_finalizing()) return;
  if (!w->holds_gil) PyEval_RestoreThread(w->base);
  while (w->pool.size() > keep) {
    PyThreadState* ts = w->pool.back();
    w->pool.pop_back();
    PyThreadState_Delete(ts);  // already cleared
  }
  w->holds_gil = false;
  PyEval_SaveThread();
}

FiberState acquire_fiber_state() {
  WorkerPy* w = tl_worker_py;
  FiberState fs;
  if (!w->pool.empty()) {
    fs.tstate = w->pool.back();
    w->pool.pop_back();
  } else {
    // Create it on this worker (rule 2), with the GIL held by the worker's base state.
    if (!w->holds_gil) {
      PyEval_RestoreThread(w->base);
      w->holds_gil = true;
    }
    fs.tstate = PyThreadState_New(g_interp);
  }
  make_current(w, fs.tstate);
#if PY_VERSION_HEX >= 0x030C0000
  fs.tstate->c_recursion_remaining =
      std::min(fs.tstate->c_recursion_remaining, c_recursion_budget(w->stack_size));
#endif
  return fs;
}

void release_fiber_state(FiberState& fs) {
  WorkerPy* w = tl_worker_py;
  park_on_base(w);
  prepare_for_reuse(fs.tstate);
  w->pool.push_back(fs.tstate);
  fs.tstate = nullptr;
}

void install_tracer(PyObject* trace) {
  PyObject* sys_settrace = PySys_GetObject("settrace");  // borrowed
  if (!sys_settrace) return;
  PyObject* r = PyObject_CallOneArg(sys_settrace, trace);
  if (r) {
    Py_DECREF(r);
  } else {
    PyErr_WriteUnraisable(trace);
  }
}

}  // namespace distaff::py
