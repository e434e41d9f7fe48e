#include "distaff/timer.hpp"
#include "distaff/detail/idle_signals.hpp"

#include <unistd.h>

#include <memory>

namespace distaff {

// Deadlines, who owns what. The execution's slot (Execution::deadline_, under its mutex) is the one
// authority: an ArmedDeadline belongs to the slot until someone takes it out, and the taker calls
// exactly one hook. The timer's queue entry is only a reminder (execution, id) that keeps the
// execution alive; it never owns the record. So:
//   - fire (timer thread): pops the entry, then takes the record only if the slot still holds that
//     id — finish() takes the record in the critical section that makes the execution terminal, so
//     a record still in the slot means "unfinished at the claim". Otherwise the entry was stale.
//   - finish() / disarm() / arm() (replacing) / stop(): take the record, drop its entry if still
//     queued (only to free it early: a stale entry is harmless), call release.
// Lock order: Execution::mu_ before Timer::mu_ (arm holds both so that no entry can be popped before
// its record is in the slot); nothing takes them the other way round, and no hook is called with
// either held.

Timer::Timer() : pid_(::getpid()) {}

Timer::~Timer() { stop(); }

std::uint64_t Timer::schedule(Clock::time_point deadline, Fn fn, void* arg) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) throw ShutdownError("the timer is stopped");
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  const std::uint64_t id = next_id_++;
  queue_.emplace(std::make_pair(deadline, id), Entry{fn, arg, ExecutionRef()});
  index_.emplace(id, deadline);
  if (deadline < wake_at_) cv_.notify_one();  // due before the thread would look again
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

bool Timer::arm(Execution& ex, Clock::time_point deadline, DeadlineHooks hooks, void* arg) {
  DISTAFF_ASSERT(hooks.fire && hooks.release);
  auto record = std::make_unique<ArmedDeadline>(ArmedDeadline{this, 0, hooks, arg});
  ArmedDeadline* replaced;
  {
    std::lock_guard<std::mutex> ex_lk(ex.mu_);
    if (ex.done()) return false;  // finish() sets the state under ex.mu_: it cannot turn terminal now
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) throw ShutdownError("the timer is stopped");
      if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
      record->id = next_id_++;
      queue_.emplace(std::make_pair(deadline, record->id), Entry{nullptr, nullptr, ExecutionRef(&ex)});
      index_.emplace(record->id, deadline);
      if (deadline < wake_at_) cv_.notify_one();  // due before the thread would look again
    }
    replaced = std::exchange(ex.deadline_, record.release());
  }
  if (replaced) release_taken(ex, replaced);
  return true;
}

bool Timer::disarm(Execution& ex) noexcept {
  ArmedDeadline* d;
  {
    std::lock_guard<std::mutex> lk(ex.mu_);
    d = std::exchange(ex.deadline_, nullptr);
  }
  if (!d) return false;
  release_taken(ex, d);
  return true;
}

void Timer::release_taken(Execution& ex, ArmedDeadline* d) noexcept {
  std::unique_ptr<ArmedDeadline> owned(d);
  // In a forked child the timer's thread does not exist and its mutex may have been held at fork:
  // leave the entry (it holds a reference, leaked with the timer) and only release.
  if (::getpid() == d->timer->pid_) d->timer->drop_entry(d->id);
  d->hooks.release(ex, d->arg);
}

void Timer::drop_entry(std::uint64_t id) noexcept {
  ExecutionRef ref;  // the entry's reference, released outside the lock
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = index_.find(id);
    if (it == index_.end()) return;  // popped by the timer thread (stale to it now) or by stop()
    auto q = queue_.find(std::make_pair(it->second, id));
    DISTAFF_ASSERT(q != queue_.end());
    ref = std::move(q->second.ex);
    queue_.erase(q);
    index_.erase(it);
  }
}

ArmedDeadline* Timer::take_armed(Execution& ex, std::uint64_t id) noexcept {
  std::lock_guard<std::mutex> lk(ex.mu_);
  ArmedDeadline* d = ex.deadline_;
  if (!d || d->timer != this || d->id != id) return nullptr;  // stale: released or replaced
  DISTAFF_ASSERT(!ex.done());  // finish() empties the slot as it turns the state terminal
  ex.deadline_ = nullptr;
  return d;
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
  std::vector<std::pair<std::uint64_t, Entry>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [key, e] : queue_) left.emplace_back(key.second, std::move(e));
    queue_.clear();
    index_.clear();
  }
  // Outside the lock: release hooks may call back into this timer (arm throws ShutdownError now).
  for (auto& [id, e] : left) {
    if (!e.ex) {
      dropped.push_back(e.arg);
    } else if (ArmedDeadline* d = take_armed(*e.ex, id)) {
      std::unique_ptr<ArmedDeadline> owned(d);
      d->hooks.release(*e.ex, d->arg);
    }
  }
  return dropped;
}

void Timer::run() {
  detail::name_this_thread("distaff-timer");
  UniqueLock lk(mu_);
  while (!stopping_) {
    if (queue_.empty()) {
      detail::IdleSignalsBlocked quiet;  // see idle_signals.hpp
      wake_at_ = Clock::time_point::max();
      cv_.wait(lk);
      wake_at_ = Clock::time_point::min();
      continue;
    }
    auto it = queue_.begin();
    // A copy: wait_until reads its deadline again after waking, and cancel() may have freed the
    // entry meanwhile (ASan: heap-use-after-free, found by `make sanitize-python`).
    const Clock::time_point deadline = it->first.first;
    if (Clock::now() < deadline) {
      // Woken early only for an entry due before `deadline`; a cancelled head entry is not a
      // reason to wake (the thread finds the queue as it is at `deadline`).
      detail::IdleSignalsBlocked quiet;
      wake_at_ = deadline;
      cv_.wait_until(lk, deadline);
      wake_at_ = Clock::time_point::min();
      continue;
    }
    const std::uint64_t id = it->first.second;
    Entry e = std::move(it->second);
    index_.erase(id);
    queue_.erase(it);
    lk.unlock();
    // Outside the lock: a callback or hook may schedule, arm or cancel.
    if (!e.ex) {
      e.fn(e.arg);
    } else if (ArmedDeadline* d = take_armed(*e.ex, id)) {
      std::unique_ptr<ArmedDeadline> owned(d);
      d->hooks.fire(*e.ex, d->arg);
    }
    e.ex = ExecutionRef();  // may destroy the execution: still outside the lock
    lk.lock();
  }
}

}  // namespace distaff
