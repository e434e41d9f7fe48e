#include "distaff/observer.hpp"

#include <algorithm>
#include <mutex>
#include <thread>

namespace distaff {

const char* to_string(EventKind k) noexcept {
  switch (k) {
    case EventKind::submit: return "submit";
    case EventKind::ready: return "ready";
    case EventKind::start: return "start";
    case EventKind::suspend: return "suspend";
    case EventKind::resume: return "resume";
    case EventKind::end: return "end";
    case EventKind::finish: return "finish";
  }
  return "?";
}

void EventBuffer::Slot::lock() noexcept {
  for (int spins = 0; busy.exchange(true, std::memory_order_acquire); ++spins) {
    while (busy.load(std::memory_order_relaxed)) {
      if (spins++ > 100) std::this_thread::yield();  // the holder was preempted: let it run
    }
  }
}

EventBuffer::EventBuffer(unsigned workers) {
  slots_.reserve(workers + 1);
  for (unsigned i = 0; i <= workers; ++i) slots_.push_back(std::make_unique<Slot>());
}

void EventBuffer::on_event(const Event& e) noexcept {
  const std::size_t i = e.worker >= 0 ? static_cast<std::size_t>(e.worker) + 1 : 0;
  DISTAFF_ASSERT(i < slots_.size());
  Slot& slot = *slots_[i];
  try {
    std::lock_guard<Slot> g(slot);
    if (slot.chunks.empty() || slot.chunks.back().size() == kChunk) {
      slot.chunks.emplace_back().reserve(kChunk);
    }
    slot.chunks.back().push_back(Record{e.time_ns, e.execution->id(), e.blocked_on,
                                  e.kind == EventKind::submit ? ExecutionRef(e.execution) : ExecutionRef(),
                                  e.worker, e.kind, e.state});
  } catch (...) {
    // No memory for the record (push_back's growth): counted, never fatal for the engine.
    lost_.fetch_add(1, std::memory_order_relaxed);
  }
}

void EventBuffer::drain(std::vector<Record>& out) {
  const std::size_t first = out.size();
  std::vector<std::vector<Record>> taken;
  for (auto& slot : slots_) {
    {
      std::lock_guard<Slot> g(*slot);
      taken.swap(slot->chunks);
    }
    for (auto& chunk : taken) {
      out.insert(out.end(), std::make_move_iterator(chunk.begin()), std::make_move_iterator(chunk.end()));
    }
    taken.clear();  // frees the chunks outside the lock
  }
  // Each buffer is in time order already; a stable sort keeps the order of equal timestamps (the
  // buffer of other threads, where submits from outside happen, comes first).
  std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                   [](const Record& a, const Record& b) { return a.time_ns < b.time_ns; });
}

}  // namespace distaff
