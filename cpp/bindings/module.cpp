// distaff._core: registers the engine object (pybind11) and the raw hot-path functions.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unistd.h>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace pyb = pybind11;
using namespace distaff;
using namespace distaff::py;

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
    struct Row {
      ExecutionRef ex;
      std::string workflow_id, error;
      bool tagged, failed;
    };
    std::vector<Row> copy;
    {
      std::lock_guard<std::mutex> g(core_->history_mu);
      const std::size_t n = core_->history.size();
      if (!filter) copy.reserve(n);
      const std::size_t start = n < core_->history_limit ? 0 : core_->history_head;
      for (std::size_t i = 0; i < n; ++i) {
        const EngineCore::HistoryEntry& e = core_->history[(start + i) % n];
        const EngineCore::HistoryExtra* x = e.extra.get();
        const std::string& wf = e.ex->workflow_id();  // the core's record (set at submit)
        const bool tagged = !wf.empty();
        if (filter && (!tagged || wf != wanted)) continue;
        copy.push_back(Row{e.ex, wf, x ? x->error : std::string(), tagged, x && !x->error.empty()});
      }
    }
    pyb::list out;
    for (const Row& r : copy) {
      const ExecutionRef& e = r.ex;
      out.append(pyb::make_tuple(e->id(), e->name(), to_string(e->kind()), e->parent_id(), e->dependency_ids(),
                                 to_string(e->state()), e->submitted_ns(), e->started_ns(), e->finished_ns(),
                                 r.tagged ? pyb::object(pyb::str(r.workflow_id)) : pyb::object(pyb::none()),
                                 r.failed ? pyb::object(pyb::str(r.error)) : pyb::object(pyb::none())));
    }
    return out;
  }

  void clear_history() {
    std::lock_guard<std::mutex> g(core_->history_mu);
    core_->history.clear();
    core_->history_head = 0;
  }

 private:
  std::unique_ptr<EngineCore> core_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "distaff's native engine (private: use the distaff package)";
  install_switch_hooks();
  if (!init_errors(m.ptr())) throw pyb::error_already_set();
  if (!init_execution_type(m.ptr())) throw pyb::error_already_set();
  if (PyModule_AddFunctions(m.ptr(), raw_functions) < 0) throw pyb::error_already_set();
  if (!init_wait(m.ptr())) throw pyb::error_already_set();
  if (!init_submitter(m.ptr())) throw pyb::error_already_set();
  if (!init_lifecycle(m.ptr())) throw pyb::error_already_set();
  if (!init_boundary(m.ptr())) throw pyb::error_already_set();
  if (!init_observe(m.ptr())) throw pyb::error_already_set();

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
}
