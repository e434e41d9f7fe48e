// _core.Recorder: the core's observer seam (distaff/observer.hpp) for Python. A recorder installs an
// EventBuffer on one engine's scheduler; the workers record into it in C++, and Python drains the
// events in batches (drain()), never one Python call per event. What the core's events do not carry
// — a failure's exception, the attempts of a retried execution — is collected in complete()
// (record_outcome) while a recorder is attached, and taken with outcomes().

#include <pybind11/pybind11.h>

#include "bindings.hpp"

namespace pyb = pybind11;
using namespace distaff;
using namespace distaff::py;

namespace distaff::py {

namespace {

// ((exception, traceback or None, link), ...) from the exception outwards along the chain Python
// prints: link is how the next one down relates to this one ("cause", "context" or "" for the
// last). Bounded, and stops at a repeat (a chain can be made into a loop).
PyObject* chain_snapshot(PyObject* exc) {
  constexpr int kMaxLinks = 32;
  if (!PyExceptionInstance_Check(exc)) return nullptr;  // formatted from the object as it is then
  PyObject* items[kMaxLinks];
  PyObject* out = PyList_New(0);
  if (!out) return nullptr;
  int n = 0;
  for (PyObject* e = exc; e && n < kMaxLinks;) {
    bool seen = false;
    for (int i = 0; i < n; ++i) seen = seen || items[i] == e;
    if (seen) break;
    items[n++] = e;
    PyObject* cause = PyException_GetCause(e);      // new reference or NULL
    PyObject* context = PyException_GetContext(e);  // new reference or NULL
    const bool suppress = reinterpret_cast<PyBaseExceptionObject*>(e)->suppress_context;
    PyObject* next = cause ? cause : (!suppress ? context : nullptr);
    const char* link = cause ? "cause" : (next ? "context" : "");
    PyObject* tb = PyException_GetTraceback(e);     // new reference or NULL
    PyObject* item = Py_BuildValue("(OOs)", e, tb ? tb : Py_None, link);
    Py_XDECREF(tb);
    // The chain's members stay alive through `out` (and the exception): borrowed below is safe.
    if (!item || PyList_Append(out, item) < 0) {
      Py_XDECREF(item);
      Py_XDECREF(cause);
      Py_XDECREF(context);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(item);
    Py_XDECREF(cause);
    Py_XDECREF(context);
    e = (next && PyExceptionInstance_Check(next)) ? next : nullptr;
  }
  PyObject* t = PyList_AsTuple(out);
  Py_DECREF(out);
  return t;
}

}  // namespace

void record_outcome(EngineCore* eng, PyExecution* pe, State state) {
  PyObject* attempts = pe->extra ? PyDict_GetItemString(pe->extra, "attempts") : nullptr;  // borrowed
  const bool failed = state == State::failed && pe->exc;
  if (!failed && !attempts) return;
  // The tracebacks as they are now, of the exception and of its chain: a later re-raise of the same
  // object (result() in the caller) puts the caller's frames in front of __traceback__ and may give
  // it a __context__; an error the engine made (a timeout) has no traceback yet at all.
  PyObject* tb = failed ? chain_snapshot(pe->exc) : nullptr;  // new reference or NULL
  if (failed && !tb) PyErr_Clear();  // no memory: formatted from the exception as it is then
  PyObject* row = Py_BuildValue("(KOOO)", static_cast<unsigned long long>(pe->core->id()), failed ? pe->exc : Py_None,
                                attempts ? attempts : Py_None, tb ? tb : Py_None);
  Py_XDECREF(tb);
  if (!row || PyList_Append(eng->outcomes, row) < 0) PyErr_Clear();  // no memory: the outcome is not kept
  Py_XDECREF(row);
}

namespace {

class Recorder {
 public:
  explicit Recorder(pyb::object capsule) : capsule_(capsule) {
    eng_ = engine_from_capsule(capsule.ptr());
    if (!eng_) throw pyb::error_already_set();
    if (!eng_->scheduler) throw pyb::value_error("this engine has no scheduler any more");
    if (eng_->outcomes) throw pyb::value_error("this engine already has a recorder attached");
    eng_->outcomes = PyList_New(0);
    if (!eng_->outcomes) throw pyb::error_already_set();
    buf_ = std::make_shared<EventBuffer>(eng_->scheduler->capacity());
    eng_->scheduler->set_observer(buf_);
  }
  ~Recorder() { close(); }

  // close: stops recording (the scheduler forgets the buffer; what it holds can still be drained).
  void close() {
    if (!eng_) return;
    if (eng_->scheduler) {
      // set_observer waits out calls in flight: those are C++ only and never wait for the GIL.
      eng_->scheduler->set_observer(nullptr);
    }
    pending_outcomes_ = pyb::reinterpret_steal<pyb::object>(eng_->outcomes);
    eng_->outcomes = nullptr;
    if (eng_->contexts) pending_contexts_ = pyb::reinterpret_steal<pyb::object>(eng_->contexts);
    eng_->contexts = nullptr;
    eng_ = nullptr;
  }
  bool closed() const { return eng_ == nullptr; }

  // drain: the events recorded since the last drain, in time order, as tuples
  // (kind, time_ns, worker, id, detail): detail is, for "submit", (name, kind, parent_id,
  // dependency ids, workflow_id or None, state); for "suspend" the id waited on (0: none); for
  // "finish" the terminal state; None otherwise. kind is an index into EVENT_KINDS.
  pyb::list drain() {
    std::vector<EventBuffer::Record> recs;
    {
      pyb::gil_scoped_release nogil;  // the drain takes the buffers' locks, which workers hold briefly
      buf_->drain(recs);
    }
    pyb::list out(recs.size());
    std::size_t i = 0;
    for (const auto& r : recs) {
      pyb::object detail = pyb::none();
      switch (r.kind) {
        case EventKind::submit: {
          const Execution& e = *r.execution;
          const auto deps = e.dependency_id_span();
          pyb::tuple d(deps.size());
          for (std::size_t k = 0; k < deps.size(); ++k) d[k] = pyb::int_(deps[k]);
          detail = pyb::make_tuple(e.name(), to_string(e.kind()), e.parent_id(), d,
                                   e.workflow_id().empty() ? pyb::object(pyb::none())
                                                           : pyb::object(pyb::str(e.workflow_id())),
                                   to_string(r.state));
          break;
        }
        case EventKind::suspend: detail = pyb::int_(r.blocked_on); break;
        case EventKind::finish: detail = pyb::str(to_string(r.state)); break;
        default: break;
      }
      out[i++] = pyb::make_tuple(static_cast<int>(r.kind), r.time_ns, r.worker, r.id, detail);
    }
    {
      pyb::gil_scoped_release nogil;
      recs.clear();  // releases the submit records' executions (C++ only)
    }
    return out;
  }

  // outcomes: (id, exception or None, attempts or None, traceback at completion or None) of the
  // executions finished since the last call that failed or retried.
  pyb::list outcomes() {
    pyb::list out;
    if (pending_outcomes_) {
      out = pyb::reinterpret_borrow<pyb::list>(pending_outcomes_);
      pending_outcomes_ = pyb::object();
      return out;
    }
    if (eng_ && eng_->outcomes) {
      out = pyb::reinterpret_steal<pyb::list>(eng_->outcomes);
      eng_->outcomes = PyList_New(0);
      if (!eng_->outcomes) throw pyb::error_already_set();
    }
    return out;
  }

  // contexts: (id, contextvars.Context) of the roots submitted since the last call from a
  // non-empty context (the OpenTelemetry span active there parents the root's span).
  pyb::list contexts() {
    pyb::list out;
    if (pending_contexts_) {
      out = pyb::reinterpret_borrow<pyb::list>(pending_contexts_);
      pending_contexts_ = pyb::object();
      return out;
    }
    if (eng_ && eng_->contexts) {
      out = pyb::reinterpret_steal<pyb::list>(eng_->contexts);
      eng_->contexts = PyList_New(0);
      if (!eng_->contexts) throw pyb::error_already_set();
    }
    return out;
  }

  // capture_contexts: from now on, keep the submitting context of root executions (contexts()).
  // Off by default: only OpenTelemetry needs them.
  void capture_contexts() {
    if (eng_ && !eng_->contexts) {
      eng_->contexts = PyList_New(0);
      if (!eng_->contexts) throw pyb::error_already_set();
    }
  }

  std::uint64_t lost() const { return buf_->lost(); }

 private:
  pyb::object capsule_;  // keeps the engine alive while recording
  EngineCore* eng_ = nullptr;
  std::shared_ptr<EventBuffer> buf_;
  pyb::object pending_outcomes_;  // the lists detached by close(), until taken
  pyb::object pending_contexts_;
};

}  // namespace

bool init_observe(PyObject* module) {
  try {
    auto m = pyb::reinterpret_borrow<pyb::module_>(module);
    pyb::class_<Recorder>(m, "Recorder")
        .def(pyb::init<pyb::object>(), pyb::arg("capsule"))
        .def("drain", &Recorder::drain)
        .def("outcomes", &Recorder::outcomes)
        .def("contexts", &Recorder::contexts)
        .def("capture_contexts", &Recorder::capture_contexts)
        .def("close", &Recorder::close)
        .def_property_readonly("closed", &Recorder::closed)
        .def_property_readonly("lost", &Recorder::lost);
    pyb::tuple kinds(7);
    for (int k = 0; k < 7; ++k) kinds[k] = pyb::str(to_string(static_cast<EventKind>(k)));
    m.attr("EVENT_KINDS") = kinds;
    m.def("monotonic_ns", [] { return monotonic_ns(); });
    m.def("wall_time_ns", [] { return wall_time_ns(); });
    return true;
  } catch (pyb::error_already_set& e) {
    e.restore();
    return false;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return false;
  }
}

}  // namespace distaff::py
