// The engine handle (_core.EngineCore, what distaff.Engine holds), its capsule, and the raw
// shutdown() and wait_idle(), which can suspend a fiber and so are not pybind11 defs (rule 4).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include <unistd.h>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace pyb = pybind11;

namespace distaff::py {

EngineCore* engine_from_capsule(PyObject* capsule) {
  return static_cast<EngineCore*>(PyCapsule_GetPointer(capsule, "distaff.EngineCore"));
}

namespace {

void capsule_destructor(PyObject* capsule) {
  // The capsule keeps the owning pybind11 object alive (its context).
  if (auto* eng = static_cast<EngineCore*>(PyCapsule_GetPointer(capsule, "distaff.EngineCore"))) {
    if (eng->capsule == capsule) eng->capsule = nullptr;
  } else {
    PyErr_Clear();
  }
  Py_XDECREF(static_cast<PyObject*>(PyCapsule_GetContext(capsule)));
}

// EngineHandle: what Python holds. Non-suspending methods only (rule 4): anything that can wait
// is a raw function taking the capsule.
class EngineHandle {
 public:
  EngineHandle(unsigned workers, unsigned max_workers, std::size_t stack_size, std::size_t history)
      : core_(new EngineCore) {
    if (engines_refused()) {
      PyErr_SetString(distaff::py::ShutdownError, "the interpreter is exiting: no new engine can start");
      throw pyb::error_already_set();
    }
    if (workers == 0 || workers > 1024) throw pyb::value_error("workers must be between 1 and 1024");
    if (max_workers < workers || max_workers > 1024) {
      throw pyb::value_error("max_workers must be between workers and 1024");
    }
    if (stack_size < kStackSizeMin || stack_size > kStackSizeMax) {
      throw pyb::value_error("stack_size must be between 64 KiB and 1 GiB");
    }
    core_->stack_size = stack_size;
    core_->history_limit = history;
    // The ring's whole capacity at once: an allocation this large is mapped, not touched, so its
    // pages become resident only as entries are written. Grown by push_back it was copied at every
    // doubling (for 100k finished executions ~3 MiB of pages touched instead of 1.6, and the
    // copies' ExecutionRef moves), and the last doubling came while a burst finished (W5's peak).
    core_->history.reserve(std::min<std::size_t>(history, std::size_t{1} << 20));
    SchedulerOptions o;
    o.workers = workers;
    o.max_workers = max_workers;
    // Grow only while the GIL is free: stuck workers are then in blocking calls (time.sleep, I/O,
    // C code that released it), where another thread helps; not in Python, where it would not.
    o.growth_helps = [] { return distaff_gil_locked() == 0; };
    o.stack_size = stack_size;
    o.run = &run_execution;
    o.start_failed = &start_failed_execution;
    o.abandon = &abandon_execution;
    o.on_worker_start = [stack_size](unsigned) { worker_started(stack_size); };
    o.on_worker_stop = [](unsigned) { worker_stopped(); };
    o.on_worker_idle = [](unsigned) { worker_idle(); };
    o.on_worker_block = [] { release_held_gil(); };
    core_->scheduler = std::make_unique<Scheduler>(std::move(o));
    core_->pid = getpid();
    core_->fork_generation = g_fork_generation;
    register_engine(core_.get());
  }

  // The handle dies when neither the Engine object nor any Execution refers to its capsule: every
  // execution it ran is finished. Its workers are joined — here on a plain thread, on a join thread
  // when this is a worker (of this engine, or of another one: a fiber never joins threads).
  ~EngineHandle() {
    Scheduler* s = core_->scheduler.get();
    if (!s) return;
    if (interpreter_finalizing() || getpid() != core_->pid) {
      // Rule 7: no destructor may join once finalisation began; nor in a forked child, where its
      // threads (workers, the elastic monitor) do not exist.
      unregister_engine(core_.get());
      (void)core_->scheduler.release();
      (void)core_.release();
      return;
    }
    drop_engine(core_.release());
  }

  pyb::object capsule(pyb::object self) {
    if (!core_->capsule) {
      PyObject* c = PyCapsule_New(core_.get(), "distaff.EngineCore", &capsule_destructor);
      if (!c) throw pyb::error_already_set();
      PyCapsule_SetContext(c, self.inc_ref().ptr());
      core_->capsule = c;  // the handle does not own the capsule (that would be a cycle)
      return pyb::reinterpret_steal<pyb::object>(c);
    }
    return pyb::reinterpret_borrow<pyb::object>(core_->capsule);
  }

  pyb::dict stats() const {
    SchedulerStats s = core_->scheduler->stats();
    pyb::dict d;
    d["live"] = s.live;
    d["queued"] = s.queued;
    d["fibers"] = s.fibers;
    d["submitted"] = s.submitted;
    d["finished"] = s.finished;
    d["workers"] = core_->scheduler->workers();
    d["threads"] = s.threads;
    d["grown"] = s.grown;
    d["closed"] = core_->scheduler->closed() || core_->closing.load();
    return d;
  }

  // history: (id, name, kind, parent_id, dependency ids, state, submitted, started, finished,
  // workflow_id or None, error or None) of the finished executions the engine remembers, oldest
  // first. With workflow_id (a str), only the executions tagged with it.
  pyb::list history(pyb::object workflow_id) const {
    const bool filter = !workflow_id.is_none();
    const std::string wanted = filter ? workflow_id.cast<std::string>() : std::string();
    pyb::list out;
    for (const EngineCore::HistoryRow& r : core_->history_rows(filter ? &wanted : nullptr)) {
      const ExecutionRef& e = r.ex;
      out.append(pyb::make_tuple(e->id(), e->name(), to_string(e->kind()), e->parent_id(), e->dependency_ids(),
                                 to_string(e->state()), e->submitted_ns(), e->started_ns(), e->finished_ns(),
                                 r.tagged ? pyb::object(pyb::str(r.workflow_id)) : pyb::object(pyb::none()),
                                 r.failed ? pyb::object(pyb::str(r.error)) : pyb::object(pyb::none())));
    }
    return out;
  }

  void clear_history() { core_->clear_history(); }

 private:
  std::unique_ptr<EngineCore> core_;
};

// running on an event loop. It cannot wait for the engine to become idle, nor shut it down.
bool own_body(PyObject* capsule, Scheduler* s) {
  if (runs_own_body_here(s)) return true;
  Execution* a = async_current();
  auto* pe = a ? static_cast<PyExecution*>(a->payload()) : nullptr;
  return pe && pe->engine == capsule && !a->done();
}

// interrupted_here: a wait_idle_until that returned false was ended by the cancel or timeout of the
// body waiting in it (a body shutting down, or waiting for, another engine): raises it (true).
bool interrupted_here() {
  Execution* self = interruptible_execution();
  if (!self || !self->interrupted()) return false;
  raise_interrupted();
  return true;
}

// shutdown(capsule, wait, cancel): see distaff.Engine.shutdown. cancel: 0 nothing, 1 what has not
// started, 2 also the bodies running now.
PyObject* raw_shutdown(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3) {
    PyErr_SetString(PyExc_TypeError, "shutdown(engine, wait, cancel) takes 3 arguments");
    return nullptr;
  }
  EngineCore* eng = engine_from_capsule(a[0]);
  if (!eng) return nullptr;
  Scheduler* s = eng->scheduler.get();
  if (own_body(a[0], s)) {
    PyErr_SetString(PyExc_RuntimeError, "an engine cannot be shut down from one of its own tasks");
    return nullptr;
  }
  const bool wait = PyObject_IsTrue(a[1]);
  const long cancel_arg = PyLong_AsLong(a[2]);
  if (cancel_arg == -1 && PyErr_Occurred()) return nullptr;
  if (cancel_arg < value_of(ShutdownCancel::none) || cancel_arg > value_of(ShutdownCancel::running)) {
    PyErr_SetString(PyExc_ValueError, "shutdown: cancel must be a ShutdownCancel");
    return nullptr;
  }
  const auto cancel = static_cast<ShutdownCancel>(cancel_arg);
  // First stop accepting work (only the running bodies' own children are still admitted), then
  // cancel and wait: a thread that keeps submitting cannot keep shutdown() waiting.
  eng->closing.store(true, std::memory_order_release);
  try {
    if (cancel != ShutdownCancel::none) {
      // Cancel first, so waiting only covers what is already running.
      for (ExecutionRef& ex : s->close(true)) {
        if (auto* pe = static_cast<PyExecution*>(ex->payload())) complete(pe, State::cancelled, nullptr);
      }
    }
    if (cancel == ShutdownCancel::running) cancel_running(a[0]);
    if (!wait) Py_RETURN_NONE;  // the work goes on; the workers are joined later (or at exit)
    const bool main_thread = on_main_thread();
    while (!s->wait_idle_until(main_thread ? Clock::now() + kSignalSlice : Clock::time_point::max())) {
      if (interrupted_here()) return nullptr;  // a body's cancel or timeout: closed, its work running
      if (PyErr_CheckSignals() < 0) return nullptr;  // closed, its work still running
    }
    s->close(false);
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
  if (join_engine(eng) < 0) return nullptr;
  Py_RETURN_NONE;
}

// wait_idle(capsule, timeout) -> bool: waits until every submitted execution finished.
PyObject* raw_wait_idle(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2) {
    PyErr_SetString(PyExc_TypeError, "wait_idle() takes 2 arguments");
    return nullptr;
  }
  if (a[0] == Py_None) return raise_forked_engine();
  EngineCore* eng = engine_from_capsule(a[0]);
  if (!eng) return nullptr;
  if (own_body(a[0], eng->scheduler.get())) {
    // Its own execution is live until it returns: the engine can never be idle while it waits.
    PyErr_SetString(DeadlockError, "an engine cannot wait until it is idle from one of its own tasks");
    return nullptr;
  }
  Clock::time_point deadline;
  if (!parse_timeout(a[1], deadline)) return nullptr;
  try {
    for (;;) {
      auto slice = std::min(deadline, Clock::now() + kSignalSlice);
      if (eng->scheduler->wait_idle_until(slice)) Py_RETURN_TRUE;
      if (interrupted_here()) return nullptr;
      if (Clock::now() >= deadline) Py_RETURN_FALSE;
      if (PyErr_CheckSignals() < 0) return nullptr;
    }
  } catch (...) {
    translate_current_exception();
    return nullptr;
  }
}

PyMethodDef engine_functions[] = {
    {"shutdown", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_shutdown)), METH_FASTCALL,
     "shutdown(engine, wait, cancel)"},
    {"wait_idle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_wait_idle)), METH_FASTCALL,
     "wait_idle(engine, timeout) -> bool"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_engine(PyObject* module) {
  if (PyModule_AddFunctions(module, engine_functions) < 0) return false;
  try {
    auto m = pyb::reinterpret_borrow<pyb::module_>(module);
    pyb::class_<EngineHandle>(m, "EngineCore")
        .def(pyb::init<unsigned, unsigned, std::size_t, std::size_t>(), pyb::arg("workers"),
             pyb::arg("max_workers"), pyb::arg("stack_size"), pyb::arg("history"))
        .def("capsule", [](pyb::object self) { return self.cast<EngineHandle&>().capsule(self); })
        .def("stats", &EngineHandle::stats)
        .def("history", &EngineHandle::history, pyb::arg("workflow_id") = pyb::none())
        .def("clear_history", &EngineHandle::clear_history);

    m.attr("STACK_SIZE_MIN") = kStackSizeMin;
    m.attr("STACK_SIZE_MAX") = kStackSizeMax;
    m.attr("STACK_SIZE_DEFAULT") = SchedulerOptions{}.stack_size;
    // Tests only: how many stacks get a static guard page process-wide (the rest get dynamic ones).
    m.def("_set_stack_guard_limit", [](std::size_t limit) {
      const std::size_t old = stack_guard_limit();
      set_stack_guard_limit(limit);
      return old;
    });
    // Tests only: where the calling thread state's Python frames live (python_fiber.cpp, rule 11):
    // (frames start in the fiber's stack slot, chunks in the data stack's chain, spare chunks, the
    // address of the fiber's scratch area or 0).
    m.def("_frame_stack", []() {
      const FrameStackInfo i = frame_stack_info();
      return pyb::make_tuple(i.root_in_stack_slot, i.chunks, i.spare_chunks,
                             reinterpret_cast<std::uintptr_t>(distaff::fiber_scratch()));
    });
    return true;
  } catch (pyb::error_already_set& err) {
    err.restore();
    return false;
  }
}

}  // namespace distaff::py
