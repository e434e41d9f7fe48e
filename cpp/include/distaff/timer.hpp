#pragma once
// Timer: one thread that fires callbacks at deadlines (execution timeouts).

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "distaff/execution.hpp"

namespace distaff {

class Timer {
 public:
  using Fn = void (*)(void* arg);

  // The thread starts on the first schedule(). `on_thread_start`/`on_thread_stop` run on it.
  Timer() = default;
  // Warning: joins the thread (stop()); entries still pending are dropped without being called.
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // schedule: calls fn(arg) on the timer thread at (or shortly after) `deadline`. Returns an id for
  // cancel(). Any thread; never blocks beyond a short lock. Throws ShutdownError after stop().
  std::uint64_t schedule(Clock::time_point deadline, Fn fn, void* arg);

  // cancel: removes a pending entry; true if it was removed before firing (then fn is never called
  // and the caller owns `arg` again). False if it fired, is firing, or never existed.
  bool cancel(std::uint64_t id);

  // stop: joins the thread and returns the args of the entries that never fired, for the caller
  // to release. Blocks the calling thread (switch hooks around the join). Idempotent.
  std::vector<void*> stop();

  std::size_t pending() const;

 private:
  void run();
  struct Entry {
    Fn fn;
    void* arg;
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<Clock::time_point, std::uint64_t>, Entry> queue_;
  std::map<std::uint64_t, Clock::time_point> index_;
  std::uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace distaff
