#pragma once
// WaitSet: wait for a condition over many executions with one registration per member and one
// wake-up for the waiter, whether the waiter is a fiber, an OS thread or (through on_ready) an
// asyncio loop. wait, as_completed, gather and join are built on it.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "distaff/execution.hpp"

namespace distaff {

enum class WaitCondition : std::uint8_t {
  all,              // every member finished
  any,              // at least one member finished
  first_exception,  // a member failed, or every member finished (concurrent.futures FIRST_EXCEPTION)
};

class WaitSet {
 public:
  // ReadyFn: called once, when the condition first holds, on the thread that finished the member
  // that satisfied it (or on the constructing thread if it already held). Must not throw.
  using ReadyFn = void (*)(void* arg);

  // Registers one completion callback per member. Duplicates are allowed and counted once each.
  WaitSet(std::vector<ExecutionRef> members, WaitCondition condition);
  // Does not wait: detach()es. A member callback running meanwhile finds the shared state alive
  // (it is reference counted).
  ~WaitSet();
  WaitSet(const WaitSet&) = delete;
  WaitSet& operator=(const WaitSet&) = delete;

  std::size_t size() const noexcept;
  // satisfied: the condition holds now.
  bool satisfied() const noexcept;

  // wait_until: waits until the condition holds or `deadline` passes; true if it holds. Suspends a
  // fiber or blocks a thread (switch hooks around the park), like Execution::wait_until, and returns
  // false early if the calling execution is interrupted (check interrupted()).
  bool wait_until(Clock::time_point deadline);

  // next_completed: the index of the next member in completion order not yet returned, waiting up
  // to `deadline` for one. Returns kTimedOut on timeout (or interrupt), kExhausted when every member
  // was returned.
  static constexpr std::int64_t kTimedOut = -1;
  static constexpr std::int64_t kExhausted = -2;
  std::int64_t next_completed(Clock::time_point deadline);

  // first_failed: the index of the first member, in completion order, that failed; -1 if none.
  std::int64_t first_failed() const noexcept;
  std::size_t finished_count() const noexcept;

  // on_ready: calls fn(arg) once when the condition holds (at once if it already does), then
  // release(arg) if given; release(arg) alone if the wait-set is detached before it held.
  void on_ready(ReadyFn fn, void* arg, ReadyFn release = nullptr);

  // on_each: calls fn(arg) after every member completion from now on (where the member finished),
  // and release(arg) once no more calls can come (the last member finished, or the wait-set was
  // detached: then at once, or when a member callback running meanwhile returns). For a consumer
  // of next_completed() that must be woken (an asyncio loop). Members finished before the call
  // are not reported: drain next_completed(now) first.
  void on_each(ReadyFn fn, void* arg, ReadyFn release);

  // detach: gives up the wait. Removes the callback of every member not finished yet
  // (Execution::remove_callback), so a timed-out or cancelled wait leaves nothing registered on
  // members that run on; no on_ready/on_each call starts afterwards, and their release runs now
  // (or, if a member callback is running on another thread, when it returns). Idempotent; the
  // destructor calls it. Not concurrently with another call on this object.
  void detach() noexcept;

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
  std::vector<ExecutionRef> members_;  // until detach(): to remove the callbacks still registered
};

}  // namespace distaff
