#pragma once
// Timer: one thread that runs callbacks at deadlines, and the per-execution deadlines built on it
// (a task's timeout=: arm(), disarm(), and Execution::finish() disarming).

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "distaff/execution.hpp"
#include "distaff/thread_annotations.hpp"

namespace distaff {

// DeadlineHooks: what becomes of the `arg` of a deadline armed with Timer::arm. For every arm() that
// returned true exactly one of the two is called, exactly once, and takes over `arg`:
//   fire(ex, arg): the deadline passed while `ex` was unfinished. On the timer thread, no distaff lock
//     held. `ex` was unfinished when the deadline was claimed, but may finish while fire runs (a
//     finish that *returned* before the claim released the deadline instead): fire finishes `ex`
//     itself, with finish() or terminate_tree(), and a false return says someone was first.
//   release(ex, arg): the deadline will never fire, because `ex` finished first, it was disarmed or
//     re-armed, or the timer stopped. On the thread that did that, inside that call (finish(),
//     disarm(), arm(), stop()), no distaff lock held, after `ex` turned terminal when it finished.
// Neither may throw. Both may call into the Timer and `ex` (arm again, finish, add callbacks).
struct DeadlineHooks {
  void (*fire)(Execution& ex, void* arg) = nullptr;
  void (*release)(Execution& ex, void* arg) = nullptr;
};

// ArmedDeadline: the record of an armed deadline, owned by the execution's deadline slot (an
// Execution holds at most one). Whoever takes it out of the slot, under the execution's mutex —
// the timer thread to fire it, finish()/disarm()/arm()/stop() to release it — owns it and calls
// exactly one hook. The timer's queue entry only points at the execution and the id: an entry whose
// id no longer matches the slot is stale and is dropped without calling anything.
struct ArmedDeadline {
  class Timer* timer;
  std::uint64_t id;
  DeadlineHooks hooks;
  void* arg;
};

class Timer {
 public:
  using Fn = void (*)(void* arg);

  // The thread starts on the first schedule()/arm().
  Timer();
  // Warning: joins the thread (stop()); callbacks still pending are dropped without being called,
  // deadlines still pending are released (DeadlineHooks::release) on the destroying thread. Destroy
  // a timer only once no thread may still be finishing or disarming an execution armed on it (the
  // releasing thread drops the queue entry after taking the record); the bindings never destroy
  // theirs.
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // schedule: calls fn(arg) on the timer thread at (or shortly after) `deadline`. Returns an id for
  // cancel(). Any thread; never blocks beyond a short lock. Throws ShutdownError after stop().
  std::uint64_t schedule(Clock::time_point deadline, Fn fn, void* arg) DISTAFF_EXCLUDES(mu_);

  // cancel: removes a pending schedule()d entry; true if it was removed before firing (then fn is
  // never called and the caller owns `arg` again). False if it fired, is firing, or never existed.
  bool cancel(std::uint64_t id) DISTAFF_EXCLUDES(mu_);

  // arm: `ex` gets a deadline: if it is still unfinished at `deadline`, hooks.fire(ex, arg) runs on
  // the timer thread; otherwise hooks.release(ex, arg) runs when it finishes (see DeadlineHooks).
  // A deadline armed before on `ex` (on this timer or another) is replaced: its release runs on this
  // thread before arm returns. Returns false, doing nothing (the caller keeps `arg`), if `ex` is
  // already finished. Throws ShutdownError after stop() (the caller keeps `arg`; a deadline armed
  // before stays armed). The timer keeps `ex` alive while the deadline is pending. Any thread;
  // never blocks beyond short locks (the execution's, then the timer's).
  bool arm(Execution& ex, Clock::time_point deadline, DeadlineHooks hooks, void* arg) DISTAFF_EXCLUDES(mu_);

  // disarm: removes the deadline armed on `ex`, if any, and runs its release on this thread; true
  // if there was one. False if there was none, or it fired or is firing (fire owns it). Any thread.
  // Execution::finish() does this by itself, so a finished execution never has a deadline.
  static bool disarm(Execution& ex) noexcept;

  // stop: joins the thread, then releases the deadlines still pending (their release runs on this
  // thread, after the join) and returns the args of the schedule()d entries that never fired, for
  // the caller to release. A fire already claimed completes before the join returns. Blocks the
  // calling thread (switch hooks around the join: the thread may need what the caller holds, the
  // GIL, to finish a hook). Idempotent. Later schedule()/arm() throw ShutdownError.
  std::vector<void*> stop() DISTAFF_EXCLUDES(mu_);

  // pending: entries in the queue (schedule()d callbacks and deadlines, including stale deadline
  // entries not yet dropped).
  std::size_t pending() const DISTAFF_EXCLUDES(mu_);

 private:
  friend class Execution;
  void run() DISTAFF_EXCLUDES(mu_);
  // release_taken: `d` was taken out of `ex`'s slot by the caller: drop its queue entry (if this
  // process still owns the timer thread) and call release.
  static void release_taken(Execution& ex, ArmedDeadline* d) noexcept;
  // take_armed: takes the deadline out of `ex`'s slot if it is deadline `id` of this timer.
  ArmedDeadline* take_armed(Execution& ex, std::uint64_t id) noexcept;
  void drop_entry(std::uint64_t id) noexcept DISTAFF_EXCLUDES(mu_);

  struct Entry {
    Fn fn;          // schedule(): fn(arg); a deadline: nullptr
    void* arg;
    ExecutionRef ex;  // a deadline: its execution (kept alive while queued)
  };
  // The queue, ordered by deadline then id, and the index from id to deadline for cancel().
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<Clock::time_point, std::uint64_t>, Entry> queue_ DISTAFF_GUARDED_BY(mu_);
  std::map<std::uint64_t, Clock::time_point> index_ DISTAFF_GUARDED_BY(mu_);
  std::uint64_t next_id_ DISTAFF_GUARDED_BY(mu_) = 1;
  bool stopping_ DISTAFF_GUARDED_BY(mu_) = false;
  // What the thread is waiting for: the deadline it sleeps until (max: no entry), or min while it
  // is not waiting (it looks at the queue before it waits again). schedule()/arm() wake it only for
  // an entry due before that: a stream of arm-then-cancel (the bindings' swallowed-interrupt watch,
  // one per cancelled body) woke it once per arm.
  Clock::time_point wake_at_ DISTAFF_GUARDED_BY(mu_) = Clock::time_point::min();
  std::thread thread_;  // started under mu_; joined by stop() once stopping_ is set
  // The process that started the thread: in a forked child the thread does not exist and mu_ may
  // have been held at fork, so the child never locks it (a finish there only releases the slot).
  const pid_t pid_;
};

}  // namespace distaff
