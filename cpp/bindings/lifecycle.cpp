// Engine lifecycle: the registry of live engines, and joining workers without blocking a worker.
//
// A fiber must never block its OS thread, and joining an engine's workers blocks: they need the GIL
// to stop (worker_stopped), and a worker keeps the GIL while it has fibers. So joins run on one
// process-wide *reaper* thread (no Python thread state, no GIL), and whoever asked for the join
// waits on a Boost.Fiber condition — suspending only its fiber on a worker, parking in slices on the
// main thread. A dropped engine (its handle destroyed) is joined the same way and deleted after.

#include <condition_variable>
#include <deque>
#include <thread>
#include <vector>

#include <unistd.h>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

namespace {

// Every EngineCore alive in this process. Guarded by the GIL.
std::vector<EngineCore*>* g_registry = new std::vector<EngineCore*>;

// The reaper. Heap-allocated and never destroyed: no static destructor may run while it waits.
struct Reaper {
  std::mutex mu;
  std::condition_variable cv;       // work queued, or stop
  std::condition_variable idle_cv;  // queue empty and nothing in hand
  std::deque<EngineCore*> queue;
  int busy = 0;                // engines being joined now
  unsigned generation = 0;     // bumped to stop the current thread (once the queue is empty)
  std::thread* thread = nullptr;
};
Reaper* g_reaper = new Reaper;

void reaper_main(Reaper* r, unsigned generation) {
  std::unique_lock<std::mutex> lk(r->mu);
  for (;;) {
    r->cv.wait(lk, [r, generation] { return r->generation != generation || !r->queue.empty(); });
    if (r->queue.empty()) return;  // stopped, nothing left (a newer thread takes later work)
    EngineCore* eng = r->queue.front();
    r->queue.pop_front();
    ++r->busy;
    lk.unlock();
    eng->scheduler->join(/*switch_hooks=*/false);  // no Python state here: nothing to release
    bool drop;
    {
      std::lock_guard<std::mutex> g(eng->join_mu);
      eng->join_state = 2;
      drop = eng->dropped;
      eng->join_cv.notify_all();  // under the mutex: see Scheduler::join on Boost.Fiber wake-ups
    }
    if (drop) delete eng;  // Python-free: history holds core records only
    lk.lock();
    --r->busy;
    if (r->queue.empty() && r->busy == 0) r->idle_cv.notify_all();
  }
}

// start_join: hands eng's join to the reaper. eng->join_mu held, join_state was 0.
void start_join(EngineCore* eng) {
  eng->join_state = 1;
  eng->scheduler->close(false);
  Reaper* r = g_reaper;
  std::lock_guard<std::mutex> g(r->mu);
  if (!r->thread) r->thread = new std::thread(reaper_main, r, r->generation);
  r->queue.push_back(eng);
  r->cv.notify_one();
}

// wait_joined: waits (GIL held on entry and exit, released while parked) until eng is joined.
int wait_joined(EngineCore* eng, bool sliced) {
  auto park = [eng](Clock::time_point d) {
    detail::SuspendScope suspend;
    std::unique_lock<std::mutex> lk(eng->join_mu);
    while (eng->join_state != 2) {
      if (d == Clock::time_point::max()) {
        eng->join_cv.wait(lk);
      } else if (eng->join_cv.wait_until(lk, d) == boost::fibers::cv_status::timeout) {
        return eng->join_state == 2;
      }
    }
    return true;
  };
  if (!sliced) return park(Clock::time_point::max()) ? 0 : -1;
  return wait_sliced(park, Clock::time_point::max()) == 0 ? 0 : -1;
}

}  // namespace

void register_engine(EngineCore* eng) { g_registry->push_back(eng); }

void unregister_engine(EngineCore* eng) { std::erase(*g_registry, eng); }

int join_engine(EngineCore* eng) {
  {
    std::lock_guard<std::mutex> g(eng->join_mu);
    if (eng->join_state == 2) return 0;
    if (eng->join_state == 0) start_join(eng);
  }
  return wait_joined(eng, /*sliced=*/true);
}

void drop_engine(EngineCore* eng) {
  unregister_engine(eng);
  eng->scheduler->close(false);
  bool delete_now = false;
  bool join_here = false;
  {
    std::lock_guard<std::mutex> g(eng->join_mu);
    if (eng->join_state == 2) {
      delete_now = true;
    } else if (eng->join_state == 1 || on_any_worker()) {
      // A join is under way (a shutdown interrupted by Ctrl-C), or this is a worker thread —
      // possibly one of eng's own (its last execution was freed here): the reaper joins and deletes.
      eng->dropped = true;
      if (eng->join_state == 0) start_join(eng);
    } else {
      join_here = true;  // a plain thread: join now, as before, with the GIL released
      eng->join_state = 1;
    }
  }
  if (join_here) {
    eng->scheduler->join();  // switch hooks release the GIL while joining
    std::lock_guard<std::mutex> g(eng->join_mu);
    eng->join_state = 2;
    eng->join_cv.notify_all();
    delete_now = true;
  }
  if (delete_now) delete eng;
}

namespace {

// _open_engines() -> [capsule]: the engines of this process not yet joined (dropped ones with work
// still running included). The exit hook shuts each one down.
PyObject* raw_open_engines(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  if (!out) return nullptr;
  const pid_t pid = getpid();
  for (EngineCore* eng : *g_registry) {
    if (eng->pid != pid || !eng->capsule) continue;
    {
      std::lock_guard<std::mutex> g(eng->join_mu);
      if (eng->join_state == 2) continue;
    }
    if (PyList_Append(out, eng->capsule) < 0) {
      Py_DECREF(out);
      return nullptr;
    }
  }
  return out;
}

// engine_live(capsule) -> (live, fibers): unfinished executions of that engine, and bodies still
// on a fiber (a cancelled body stuck in C code is finished, yet still running).
PyObject* raw_engine_live(PyObject*, PyObject* capsule) {
  EngineCore* eng = engine_from_capsule(capsule);
  if (!eng) return nullptr;
  SchedulerStats st = eng->scheduler->stats();
  return Py_BuildValue("(LL)", static_cast<long long>(st.live), static_cast<long long>(st.fibers));
}

// on_own_worker(capsule) -> bool: the caller runs on one of that engine's workers.
PyObject* raw_on_own_worker(PyObject*, PyObject* capsule) {
  EngineCore* eng = engine_from_capsule(capsule);
  if (!eng) return nullptr;
  return PyBool_FromLong(eng->scheduler->on_worker());
}

// _wait_reaped(): waits until the reaper has joined (and deleted) every engine handed to it, then
// stops its thread (a later drop starts a new one). The exit hook calls it before finalisation.
PyObject* raw_wait_reaped(PyObject*, PyObject*) {
  if (on_any_worker()) {
    PyErr_SetString(PyExc_RuntimeError, "_wait_reaped() cannot be called from a task body");
    return nullptr;
  }
  Reaper* r = g_reaper;
  std::thread* t = nullptr;
  Py_BEGIN_ALLOW_THREADS
  {
    std::unique_lock<std::mutex> lk(r->mu);
    r->idle_cv.wait(lk, [r] { return r->queue.empty() && r->busy == 0; });
    ++r->generation;
    r->cv.notify_all();
    t = std::exchange(r->thread, nullptr);
  }
  if (t) {
    t->join();
    delete t;
  }
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef lifecycle_functions[] = {
    {"_open_engines", &raw_open_engines, METH_NOARGS, "capsules of the engines not yet joined"},
    {"engine_live", &raw_engine_live, METH_O, "engine_live(engine) -> unfinished executions"},
    {"on_own_worker", &raw_on_own_worker, METH_O, "on_own_worker(engine) -> running on its worker"},
    {"_wait_reaped", &raw_wait_reaped, METH_NOARGS, "wait until dropped engines are joined"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_lifecycle(PyObject* module) { return PyModule_AddFunctions(module, lifecycle_functions) == 0; }

void lifecycle_after_fork() {
  // The reaper thread does not exist in the child, and its mutex may have been held at fork:
  // forget it (leaked) and start afresh. Inherited engines stay registered; pid filters them out.
  g_reaper = new Reaper;
}

}  // namespace distaff::py
