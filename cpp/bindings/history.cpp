// The engine's history: finished executions kept for engine.graph() and engine.executions(), a
// bounded ring, newest last. Python-free once recorded (EngineCore::HistoryExtra, bindings.hpp).

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bindings.hpp"

namespace distaff::py {

void EngineCore::remember(const ExecutionRef& ex, std::unique_ptr<HistoryExtra> extra) {
  if (history_limit == 0) return;
  std::unique_ptr<HistoryExtra> old;  // freed after the lock is released
  std::lock_guard<std::mutex> g(history_mu);
  if (history.size() < history_limit) {
    history.push_back(HistoryEntry{ex, std::move(extra)});
  } else {
    HistoryEntry& e = history[history_head];
    e.ex = ex;
    old = std::move(e.extra);
    e.extra = std::move(extra);
    history_head = (history_head + 1) % history_limit;
  }
}

std::vector<EngineCore::HistoryRow> EngineCore::history_rows(const std::string* workflow_id) {
  std::vector<HistoryRow> copy;
  std::lock_guard<std::mutex> g(history_mu);
  const std::size_t n = history.size();
  if (!workflow_id) copy.reserve(n);
  const std::size_t start = n < history_limit ? 0 : history_head;
  for (std::size_t i = 0; i < n; ++i) {
    const HistoryEntry& e = history[(start + i) % n];
    const HistoryExtra* x = e.extra.get();
    const std::string& wf = e.ex->workflow_id();  // the core's record (set at submit)
    const bool tagged = !wf.empty();
    if (workflow_id && (!tagged || wf != *workflow_id)) continue;
    copy.push_back(HistoryRow{e.ex, wf, x ? x->error : std::string(), tagged, x && !x->error.empty()});
  }
  return copy;
}

void EngineCore::clear_history() {
  std::lock_guard<std::mutex> g(history_mu);
  history.clear();
  history_head = 0;
}

namespace {

// What the history keeps of a finished execution besides its core record (which has the workflow
// id): for a failure "Type: message" (str() of the exception, cut to kErrorTextMax bytes). Null for
// an execution that did not fail: the common case allocates nothing. GIL held.
constexpr std::size_t kErrorTextMax = 500;

std::unique_ptr<EngineCore::HistoryExtra> history_extra(PyExecution* pe) {
  const bool failed = pe->exc && pe->core->state() == State::failed;
  if (!failed) return nullptr;
  SavedError saved;
  auto extra = std::make_unique<EngineCore::HistoryExtra>();
  if (failed) {
    const char* tp = Py_TYPE(pe->exc)->tp_name;
    if (const char* dot = std::strrchr(tp, '.')) tp = dot + 1;  // "numpy.linalg.LinAlgError": the name
    extra->error = tp;
    if (PyObject* text = PyObject_Str(pe->exc)) {  // the body's exception: its __str__ may run Python
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(text, &n);
      if (s && n > 0) {
        std::size_t len = static_cast<std::size_t>(n);
        if (len > kErrorTextMax) {
          len = kErrorTextMax;
          while (len > 0 && (static_cast<unsigned char>(s[len]) & 0xC0) == 0x80) --len;  // whole characters
        }
        extra->error.append(": ").append(s, len);
        if (len < static_cast<std::size_t>(n)) extra->error.append("...");
      }
      Py_DECREF(text);
    }
    PyErr_Clear();  // a failing __str__ leaves the type name alone
  }
  return extra;
}

}  // namespace

void remember_finished(EngineCore* eng, PyExecution* pe) { eng->remember(ExecutionRef(pe->core), history_extra(pe)); }

}  // namespace distaff::py
