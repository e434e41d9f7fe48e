// Engine lifecycle: the registry of live engines, and joining workers without blocking a worker.
//
// A fiber must never block its OS thread, and joining an engine's workers blocks: they need the GIL
// to stop (worker_stopped), and a worker keeps the GIL while it has fibers. So joins run on a
// *join thread* of their own (no Python thread state, no GIL), and whoever asked for the join waits
// on a Boost.Fiber condition — suspending only its fiber on a worker, parking in slices on the main
// thread. A dropped engine (its handle destroyed) is joined the same way and deleted after.

#include <algorithm>
#include <condition_variable>
#include <thread>
#include <vector>

#include <unistd.h>

#include "bindings.hpp"
#include "distaff/detail/idle_signals.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

namespace {

// Every EngineCore alive in this process. Guarded by the GIL.
std::vector<EngineCore*>* g_registry = new std::vector<EngineCore*>;
// Set by the exit hook: 1 once it begins — only bodies may still create engines (a workflow running
// at exit may use one); 2 once no engine is left — none at all. An engine a daemon thread created
// after that would run bodies during finalisation. Guarded by the GIL.
int g_refuse_engines = 0;

// Joins run on threads of their own, one per join: a body may shut down (or drop) an engine while
// its own engine is being joined — the inner join must not queue behind the outer one, whose
// worker waits for that body. A join thread is joined in turn by whoever waited for it (it has
// nothing left to do but return), or, for a dropped engine, parked in `finished` and joined by the
// next drop or by _wait_reaped(): no thread outlives its use, so thread counts return to baseline.
// Heap-allocated and never destroyed: no static destructor may run while a join thread ends.
struct Reaper {
  std::mutex mu;
  std::condition_variable idle_cv;    // active dropped to 0
  int active = 0;                     // joins under way
  std::vector<std::thread> finished;  // join threads of dropped engines: done, or about to be
};
Reaper* g_reaper = new Reaper;

void reap(Reaper* r, EngineCore* eng) {
  distaff::detail::block_idle_signals_for_good();  // runs no Python: signals are the main thread's
  distaff::detail::name_this_thread("distaff-join");
  eng->scheduler->join(/*switch_hooks=*/false);  // no Python state here: nothing to release
  std::thread self;
  bool drop;
  {
    std::lock_guard<std::mutex> g(eng->join_mu);
    eng->join_state = 2;
    drop = eng->dropped;
    if (drop) self = std::move(eng->joiner);  // nobody waits for this engine any more
    eng->join_cv.notify_all();  // under the mutex: see Scheduler::join on Boost.Fiber wake-ups
  }
  if (drop) delete eng;  // Python-free: history holds core records only
  std::lock_guard<std::mutex> g(r->mu);
  if (self.joinable()) r->finished.push_back(std::move(self));
  if (--r->active == 0) r->idle_cv.notify_all();
}

// join_finished: joins the join threads of dropped engines that are done (each has at most a
// mutex release and its return left: a brief wait, with nothing held that they need).
void join_finished() {
  std::vector<std::thread> done;
  {
    std::lock_guard<std::mutex> g(g_reaper->mu);
    done.swap(g_reaper->finished);
  }
  for (std::thread& t : done) t.join();
}

// start_join: hands eng's join to a new join thread. eng->join_mu held, join_state was 0.
// False if no thread could be started (join_state stays 0).
bool start_join(EngineCore* eng) {
  eng->scheduler->close(false);
  Reaper* r = g_reaper;
  {
    std::lock_guard<std::mutex> g(r->mu);
    ++r->active;
  }
  try {
    eng->joiner = std::thread(reap, r, eng);  // it needs join_mu, held here, to finish
  } catch (...) {
    std::lock_guard<std::mutex> g(r->mu);
    if (--r->active == 0) r->idle_cv.notify_all();
    return false;
  }
  eng->join_state = 1;
  return true;
}

// take_joiner: the finished join thread of eng, to be joined by the caller (eng is joined).
std::thread take_joiner(EngineCore* eng) {
  std::lock_guard<std::mutex> g(eng->join_mu);
  return std::move(eng->joiner);
}

// wait_joined: waits (GIL held on entry and exit, released while parked) until eng is joined.
// A body waiting here (shutting down another engine) is woken by its own cancel or timeout, as in
// Scheduler::wait_idle_until, and raises it (-1): two bodies that shut each other's engines down
// each wait for the other's worker to end, and only their cancels end that (the exit hung in it).
int wait_joined(EngineCore* eng) {
  Execution* self = interruptible_execution();
  WakerScope waker(self, eng->join_mu, eng->join_cv);
  bool interrupted = false;
  auto park = [eng, self, &interrupted](Clock::time_point d) {
    detail::SuspendScope suspend;
    std::unique_lock<std::mutex> lk(eng->join_mu);
    while (eng->join_state != 2) {
      if (self && self->interrupted()) {
        interrupted = true;
        return true;
      }
      if (d == Clock::time_point::max()) {
        eng->join_cv.wait(lk);
      } else if (eng->join_cv.wait_until(lk, d) == boost::fibers::cv_status::timeout) {
        return eng->join_state == 2;
      }
    }
    return true;
  };
  if (wait_sliced(park, Clock::time_point::max()) != 0) return -1;
  if (interrupted) {
    raise_interrupted();
    return -1;
  }
  return 0;
}

}  // namespace

bool engines_refused() {
  if (g_refuse_engines == 0) return false;
  return g_refuse_engines == 2 || !(on_any_worker() || current_execution());
}

void register_engine(EngineCore* eng) { g_registry->push_back(eng); }

void unregister_engine(EngineCore* eng) { std::erase(*g_registry, eng); }

int join_engine(EngineCore* eng) {
  bool join_here = false;
  {
    std::lock_guard<std::mutex> g(eng->join_mu);
    if (eng->join_state == 2) return 0;
    if (eng->join_state == 0 && !start_join(eng)) {
      // No thread to be had (memory, or vm.max_map_count used up: a thread needs a stack mapping).
      // A plain thread joins itself, as before join threads existed; a worker must not block.
      if (on_any_worker()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot start a thread to join the engine's workers");
        return -1;
      }
      join_here = true;
      eng->join_state = 1;
    }
  }
  if (join_here) {
    eng->scheduler->join();  // switch hooks release the GIL while joining
    std::lock_guard<std::mutex> g(eng->join_mu);
    eng->join_state = 2;
    eng->join_cv.notify_all();  // under the mutex, as in reap()
    return 0;
  }
  if (wait_joined(eng) < 0) return -1;  // the join goes on; a later call ends it
  std::thread t = take_joiner(eng);
  if (t.joinable()) t.join();  // it only has to return: no thread outlives shutdown()
  return 0;
}

void drop_engine(EngineCore* eng) {
  unregister_engine(eng);
  join_finished();
  eng->scheduler->close(false);
  bool delete_now = false;
  bool join_here = false;
  std::thread joiner;
  {
    std::lock_guard<std::mutex> g(eng->join_mu);
    if (eng->join_state == 2) {
      delete_now = true;
      joiner = std::move(eng->joiner);  // set if the shutdown that joined was interrupted after
    } else if (eng->join_state == 1 || on_any_worker()) {
      // A join is under way (a shutdown interrupted by Ctrl-C), or this is a worker thread —
      // possibly one of eng's own (its last execution was freed here): a join thread joins and
      // deletes. Without a thread to be had, the engine is leaked (its workers park, idle).
      eng->dropped = true;
      if (eng->join_state == 0) (void)start_join(eng);
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
  if (joiner.joinable()) joiner.join();  // done: it only has to return
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

// _refuse_new_engines(level): from now on Engine() raises ShutdownError — outside bodies (1), or
// everywhere (2). The exit hook calls it.
PyObject* raw_refuse_new_engines(PyObject*, PyObject* level) {
  const long v = PyLong_AsLong(level);
  if (v == -1 && PyErr_Occurred()) return nullptr;
  g_refuse_engines = std::max(g_refuse_engines, static_cast<int>(v));
  Py_RETURN_NONE;
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
  return PyBool_FromLong(runs_own_body_here(eng->scheduler.get()));
}

// _wait_reaped(): waits until every join handed to a join thread is done (and dropped engines
// deleted). The exit hook calls it before finalisation.
PyObject* raw_wait_reaped(PyObject*, PyObject*) {
  if (on_any_worker()) {
    PyErr_SetString(PyExc_RuntimeError, "_wait_reaped() cannot be called from a task body");
    return nullptr;
  }
  Reaper* r = g_reaper;
  Py_BEGIN_ALLOW_THREADS
  {
    std::unique_lock<std::mutex> lk(r->mu);
    r->idle_cv.wait(lk, [r] { return r->active == 0; });
  }
  join_finished();
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// The signals distaff's threads block while they idle (idle_signals.hpp), for the Python helper
// threads to block the same ones (distaff/_quiet.py).
PyObject* raw_idle_signals(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  if (!out) return nullptr;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&distaff::detail::idle_signals(), sig) != 1) continue;
    PyObject* n = PyLong_FromLong(sig);
    if (!n || PyList_Append(out, n) < 0) {
      Py_XDECREF(n);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(n);
  }
  return out;
}

PyMethodDef lifecycle_functions[] = {
    {"_idle_signals", &raw_idle_signals, METH_NOARGS, "signal numbers distaff's threads block while idle"},
    {"_open_engines", &raw_open_engines, METH_NOARGS, "capsules of the engines not yet joined"},
    {"engine_live", &raw_engine_live, METH_O, "engine_live(engine) -> unfinished executions"},
    {"on_own_worker", &raw_on_own_worker, METH_O, "on_own_worker(engine) -> running on its worker"},
    {"_wait_reaped", &raw_wait_reaped, METH_NOARGS, "wait until dropped engines are joined"},
    {"_refuse_new_engines", &raw_refuse_new_engines, METH_O, "Engine() raises from now on (exit)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_lifecycle(PyObject* module) { return PyModule_AddFunctions(module, lifecycle_functions) == 0; }

void lifecycle_after_fork() {
  // The join threads do not exist in the child, and the mutex may have been held at fork: forget
  // the state (leaked) and start afresh. Inherited engines stay registered; pid filters them out.
  g_reaper = new Reaper;
  g_refuse_engines = 0;
}

}  // namespace distaff::py
