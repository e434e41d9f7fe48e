#pragma once
// Observer: what a Scheduler tells about its executions as they go — submit, ready, start,
// suspend, resume, end and finish, each with the worker it happened on and a monotonic timestamp.
// The seam traces, logging, progress and OpenTelemetry are built on (docs/observability.md).
//
// An observer belongs to one Scheduler (Scheduler::set_observer), never to the process: two engines
// record independently. With none installed, each notification point costs one atomic load and a
// branch (measured: W1 unchanged, docs/observability.md).

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "distaff/execution.hpp"

namespace distaff {

// EventKind: one step in an execution's life, in the order they happen to one execution:
//   submit  Scheduler::submit accepted it (queued at once when it has no gating dependencies);
//   ready   its last gating dependency succeeded: queued now (only for executions submitted with deps);
//   start   a worker began its body (a fiber);
//   suspend its fiber parked: in a wait on another execution (Event::blocked_on), a sleep, a wait
//           set, an idle wait (blocked_on 0);
//   resume  its fiber runs again, on the same worker (fibers never migrate);
//   end     its fiber ended: the body returned (the execution may finish later, through a forward);
//   finish  it reached its terminal state (Event::state), on whatever thread finished it — also
//           for executions that never started (cancelled while queued, abandoned by a failed
//           dependency).
enum class EventKind : std::uint8_t { submit, ready, start, suspend, resume, end, finish };
const char* to_string(EventKind k) noexcept;

struct Event {
  EventKind kind;
  State state;               // finish: the terminal state; otherwise the state when it happened
  std::int32_t worker;       // index of the worker it happened on, or -1 for any other thread
  std::int64_t time_ns;      // steady_clock, nanoseconds (monotonic, comparable across threads)
  Execution* execution;      // valid during the call only: retain it to keep it
  std::uint64_t blocked_on;  // suspend: id of the execution waited on, 0 if none; else 0
};

// Monotonic nanoseconds (steady_clock), the clock of Event::time_ns.
inline std::int64_t monotonic_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

class Observer {
 public:
  virtual ~Observer() = default;
  // on_event: called synchronously on the thread (and fiber) where the event happens, possibly on
  // several threads at once. Must be quick, must not throw, block for long, suspend the fiber, or
  // call back into the scheduler (a worker is in the middle of a transition). Record and return.
  virtual void on_event(const Event& e) noexcept = 0;
};

// EventBuffer: an Observer that records every event into per-worker buffers (one more for threads
// that are no workers), drained in batches by another thread. A worker appends to its own buffer
// under its own mutex, which only a drain contends for; nothing is dropped (the buffers grow until
// drained). A record of a submit keeps the execution alive until drained, so its name, kind,
// parent, dependencies and workflow id can be read then.
class EventBuffer final : public Observer {
 public:
  struct Record {
    std::int64_t time_ns;
    std::uint64_t id;
    std::uint64_t blocked_on;
    ExecutionRef execution;  // submit records only
    std::int32_t worker;
    EventKind kind;
    State state;
  };

  // workers: how many worker indices may occur (Scheduler::capacity()).
  explicit EventBuffer(unsigned workers);
  void on_event(const Event& e) noexcept override;
  // drain: moves every record so far into `out` (appended), in time order. Any thread.
  void drain(std::vector<Record>& out);
  // lost: events that could not be recorded (no memory for the buffer); 0 in any sane run.
  std::uint64_t lost() const noexcept { return lost_.load(std::memory_order_relaxed); }

 private:
  // Records go into chunks of kChunk, never moved once written (a growing vector would copy
  // everything recorded so far on each doubling, on the worker).
  // 1024 records (40 KiB) stay below malloc's mmap threshold, so freed chunks are reused rather
  // than mapped and faulted in afresh.
  static constexpr std::size_t kChunk = 1024;
  // A slot's lock is a spinlock: its holder never blocks (an append, or a drain's swap), and a
  // worker's slot is contended only by a drain. Measured: a pthread mutex cost ~7% of W1 recording.
  struct alignas(64) Slot {
    std::atomic<bool> busy{false};
    std::vector<std::vector<Record>> chunks;  // guarded by busy; each reserved to kChunk
    void lock() noexcept;
    void unlock() noexcept { busy.store(false, std::memory_order_release); }
  };
  std::vector<std::unique_ptr<Slot>> slots_;  // [0]: other threads; [i + 1]: worker i
  std::atomic<std::uint64_t> lost_{0};
};

}  // namespace distaff
