#include "distaff/timer.hpp"

namespace distaff {

Timer::~Timer() { stop(); }

std::uint64_t Timer::schedule(Clock::time_point deadline, Fn fn, void* arg) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) throw ShutdownError("the timer is stopped");
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  const std::uint64_t id = next_id_++;
  const bool earliest = queue_.empty() || deadline < queue_.begin()->first.first;
  queue_.emplace(std::make_pair(deadline, id), Entry{fn, arg});
  index_.emplace(id, deadline);
  if (earliest) cv_.notify_one();
  return id;
}

bool Timer::cancel(std::uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  queue_.erase(std::make_pair(it->second, id));
  index_.erase(it);
  return true;
}

std::size_t Timer::pending() const {
  std::lock_guard<std::mutex> lk(mu_);
  return queue_.size();
}

std::vector<void*> Timer::stop() {
  std::vector<void*> dropped;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) {
    detail::SuspendScope suspend;  // the thread may need what the caller holds (the GIL) to finish
    thread_.join();
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [key, e] : queue_) dropped.push_back(e.arg);
  queue_.clear();
  index_.clear();
  return dropped;
}

void Timer::run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    if (queue_.empty()) {
      cv_.wait(lk);
      continue;
    }
    auto it = queue_.begin();
    // A copy: wait_until reads its deadline again after waking, and cancel() may have freed the
    // entry meanwhile (ASan: heap-use-after-free, found by `make sanitize-python`).
    const Clock::time_point deadline = it->first.first;
    if (Clock::now() < deadline) {
      cv_.wait_until(lk, deadline);
      continue;
    }
    Entry e = it->second;
    index_.erase(it->first.second);
    queue_.erase(it);
    lk.unlock();
    e.fn(e.arg);  // outside the lock: the callback may schedule or cancel
    lk.lock();
  }
}

}  // namespace distaff
