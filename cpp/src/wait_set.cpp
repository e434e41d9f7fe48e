#include "distaff/wait_set.hpp"

#include <mutex>

#include <boost/fiber/condition_variable.hpp>

namespace distaff {

struct WaitSet::Shared {
  struct Slot {
    Shared* owner;
    std::uint32_t index;
  };

  WaitCondition condition;
  std::size_t n = 0;
  std::vector<Slot> slots;

  // mu guards everything below it except `keep`'s target; hooks are called with it released.
  mutable std::mutex mu;
  boost::fibers::condition_variable_any cv;
  std::size_t done DISTAFF_GUARDED_BY(mu) = 0;
  std::vector<std::uint32_t> order DISTAFF_GUARDED_BY(mu);  // member indices in completion order
  std::size_t returned DISTAFF_GUARDED_BY(mu) = 0;          // next_completed() cursor into order
  std::int64_t first_failed DISTAFF_GUARDED_BY(mu) = -1;
  bool ready DISTAFF_GUARDED_BY(mu) = false;                // condition held at least once
  ReadyFn ready_fn DISTAFF_GUARDED_BY(mu) = nullptr;
  void* ready_arg DISTAFF_GUARDED_BY(mu) = nullptr;
  ReadyFn ready_release DISTAFF_GUARDED_BY(mu) = nullptr;
  ReadyFn each_fn DISTAFF_GUARDED_BY(mu) = nullptr;
  void* each_arg DISTAFF_GUARDED_BY(mu) = nullptr;
  ReadyFn each_release DISTAFF_GUARDED_BY(mu) = nullptr;

  // Keeps this state alive until the last member callback ran, even after ~WaitSet.
  std::shared_ptr<Shared> keep;
  std::size_t pending_callbacks DISTAFF_GUARDED_BY(mu) = 0;
  // Fibers and threads parked on cv: for the condition to hold (wait_until) and for the next
  // completion (next_completed). A member's completion notifies only someone it can release.
  // Boost's notify_all is compiled into libboost_fiber with a spinlock whose 5 KiB frame touches
  // a second page of the finishing fiber's stack (boost_spinlock_ttas.hpp): with 10,000 members
  // in distaff.wait, every member's stack went back to the pool with that page resident.
  std::uint32_t hold_waiters DISTAFF_GUARDED_BY(mu) = 0;
  std::uint32_t next_waiters DISTAFF_GUARDED_BY(mu) = 0;

  bool holds() const noexcept DISTAFF_REQUIRES(mu) {
    switch (condition) {
      case WaitCondition::all: return done == n;
      case WaitCondition::any: return done > 0 || n == 0;
      case WaitCondition::first_exception: return first_failed >= 0 || done == n;
    }
    return false;
  }

  // drop_pending: one member callback fewer to wait for; the last one hands the state's self
  // reference and the on_each release to the caller (who runs them with mu released).
  void drop_pending(std::size_t k, std::shared_ptr<Shared>& release, ReadyFn& release_fn, void*& release_arg)
      DISTAFF_REQUIRES(mu) {
    pending_callbacks -= k;
    if (pending_callbacks == 0 && keep) {
      release = std::move(keep);
      release_fn = each_release;
      release_arg = each_arg;
      each_fn = each_release = nullptr;
    }
  }

  static void member_done(Execution& ex, void* arg) {
    auto* slot = static_cast<Slot*>(arg);
    Shared* s = slot->owner;
    ReadyFn fire = nullptr, fire_release = nullptr;
    void* fire_arg = nullptr;
    ReadyFn each = nullptr, each_release = nullptr;
    void* each_arg = nullptr;
    void* release_arg = nullptr;
    std::shared_ptr<Shared> release;  // declared first: destroyed last, after every use of *s
    {
      std::lock_guard<std::mutex> lk(s->mu);
      s->order.push_back(slot->index);
      ++s->done;
      if (ex.state() == State::failed && s->first_failed < 0) s->first_failed = slot->index;
      if (!s->ready && s->holds()) {
        s->ready = true;
        fire = s->ready_fn;
        fire_arg = s->ready_arg;
        fire_release = s->ready_release;
        s->ready_fn = s->ready_release = nullptr;
      }
      each = s->each_fn;
      each_arg = s->each_arg;
      // With a call to make, this callback stays pending until the call returned: a detach()
      // meanwhile (the waiter giving up on another thread) must not release each_arg under it.
      if (!fire && !each) s->drop_pending(1, release, each_release, release_arg);
      // Notified under the lock: a waiter cannot miss it between its check and its park, and the
      // state cannot be freed (by `release`) before notify_all returns. The conditions only ever
      // become true, so a waiter for holds() needs no wake-up before it does.
      if (s->next_waiters != 0 || (s->hold_waiters != 0 && s->holds())) s->cv.notify_all();
    }
    if (fire) {
      fire(fire_arg);
      if (fire_release) fire_release(fire_arg);
    }
    if (each) each(each_arg);
    if (fire || each) {
      std::lock_guard<std::mutex> lk(s->mu);
      s->drop_pending(1, release, each_release, release_arg);
    }
    if (each_release) each_release(release_arg);
  }

  static void wake(void* arg) {
    auto* s = static_cast<Shared*>(arg);
    std::lock_guard<std::mutex> lk(s->mu);
    s->cv.notify_all();
  }
};

WaitSet::WaitSet(std::vector<ExecutionRef> members, WaitCondition condition)
    : shared_(std::make_shared<Shared>()) {
  Shared& s = *shared_;
  // Unlocked: no other thread can see `s` before the first add_callback below.
  s.condition = condition;
  s.n = members.size();
  s.slots.resize(s.n);
  s.order.reserve(s.n);
  s.pending_callbacks = s.n;
  if (s.n) s.keep = shared_;
  s.ready = s.holds();
  for (std::size_t i = 0; i < s.n; ++i) {
    s.slots[i] = Shared::Slot{&s, static_cast<std::uint32_t>(i)};
    members[i]->add_callback(&Shared::member_done, &s.slots[i]);
  }
  members_ = std::move(members);
}

WaitSet::~WaitSet() { detach(); }

void WaitSet::detach() noexcept {
  Shared& s = *shared_;
  std::size_t removed = 0;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    if (members_[i]->remove_callback(&Shared::member_done, &s.slots[i])) ++removed;
  }
  members_.clear();
  ReadyFn ready_release = nullptr, each_release = nullptr;
  void* ready_arg = nullptr;
  void* each_arg = nullptr;
  std::shared_ptr<Shared> release;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.ready_fn) {  // never fired: it never will
      ready_release = s.ready_release;
      ready_arg = s.ready_arg;
      s.ready_fn = s.ready_release = nullptr;
    }
    s.each_fn = nullptr;  // no call starts from now on
    if (removed) s.drop_pending(removed, release, each_release, each_arg);
  }
  if (ready_release) ready_release(ready_arg);
  if (each_release) each_release(each_arg);
}

std::size_t WaitSet::size() const noexcept { return shared_->n; }

bool WaitSet::satisfied() const noexcept {
  std::lock_guard<std::mutex> lk(shared_->mu);
  return shared_->holds();
}

std::int64_t WaitSet::first_failed() const noexcept {
  std::lock_guard<std::mutex> lk(shared_->mu);
  return shared_->first_failed;
}

std::size_t WaitSet::finished_count() const noexcept {
  std::lock_guard<std::mutex> lk(shared_->mu);
  return shared_->done;
}

namespace {
// InterruptWaker: lets interrupt() of the calling execution wake a park on this wait-set.
class InterruptWaker {
 public:
  InterruptWaker(void (*fn)(void*), void* arg) : self_(interruptible_execution()) {
    if (self_) self_->set_waker(fn, arg);
  }
  ~InterruptWaker() {
    if (self_) self_->set_waker(nullptr, nullptr);
  }
  bool interrupted() const noexcept { return self_ && self_->interrupted(); }

 private:
  Execution* self_;
};
}  // namespace

namespace {
// WaitEdge: while a running execution is parked on a wait-set that needs all of its members (all,
// first_exception), it waits on them in the wait graph: on the one unfinished member, or on a
// promise that awaits the unfinished ones (Execution::awaits_members). A member that waits on the
// parked execution, now or later, then closes a cycle that whoever closes it is told of
// (DeadlockError) — the parked side here, at the park, if the cycle is already there.
class WaitEdge {
 public:
  WaitEdge(WaitCondition condition, const std::vector<ExecutionRef>& members) {
    if (condition == WaitCondition::any) return;
    Execution* self = interruptible_execution();
    if (!self) return;
    Execution* last = nullptr;
    std::size_t unfinished = 0;
    for (const ExecutionRef& m : members) {
      if (!m->done()) {
        ++unfinished;
        last = m.get();
      }
    }
    if (unfinished == 0) return;
    if (unfinished == 1) {
      target_ = ExecutionRef(last);
    } else {
      target_ = Execution::promise("wait");
      target_->awaits_members(members);
    }
    self->set_wait_edge(*target_);
    self_ = self;
  }
  ~WaitEdge() {
    if (self_) self_->clear_wait_edge(*target_);
  }
  WaitEdge(const WaitEdge&) = delete;
  WaitEdge& operator=(const WaitEdge&) = delete;

 private:
  Execution* self_ = nullptr;
  ExecutionRef target_;
};
}  // namespace

bool WaitSet::wait_until(Clock::time_point deadline) {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.holds()) return true;
  }
  InterruptWaker waker(&Shared::wake, &s);
  if (waker.interrupted()) return false;
  WaitEdge edge(s.condition, members_);
  detail::SuspendScope suspend;
  UniqueLock lk(s.mu);
  while (!s.holds()) {
    if (waker.interrupted()) return false;
    ++s.hold_waiters;
    bool timed_out = false;
    if (deadline == Clock::time_point::max()) {
      s.cv.wait(lk);
    } else {
      timed_out = s.cv.wait_until(lk, deadline) == boost::fibers::cv_status::timeout;
    }
    --s.hold_waiters;
    if (timed_out) return s.holds();
  }
  return true;
}

std::int64_t WaitSet::next_completed(Clock::time_point deadline) {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.returned < s.order.size()) return s.order[s.returned++];
    if (s.returned == s.n) return kExhausted;
  }
  InterruptWaker waker(&Shared::wake, &s);
  if (waker.interrupted()) return kTimedOut;
  detail::SuspendScope suspend;
  UniqueLock lk(s.mu);
  while (s.returned == s.order.size()) {
    if (waker.interrupted()) return kTimedOut;
    ++s.next_waiters;
    bool timed_out = false;
    if (deadline == Clock::time_point::max()) {
      s.cv.wait(lk);
    } else {
      timed_out = s.cv.wait_until(lk, deadline) == boost::fibers::cv_status::timeout;
    }
    --s.next_waiters;
    if (timed_out && s.returned == s.order.size()) return kTimedOut;
  }
  return s.order[s.returned++];
}

void WaitSet::on_each(ReadyFn fn, void* arg, ReadyFn release) {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.pending_callbacks > 0) {
      s.each_fn = fn;
      s.each_arg = arg;
      s.each_release = release;
      return;
    }
  }
  release(arg);  // every member already finished: no call will come
}

void WaitSet::on_ready(ReadyFn fn, void* arg, ReadyFn release) {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (!s.ready) {
      s.ready_fn = fn;
      s.ready_arg = arg;
      s.ready_release = release;
      return;
    }
  }
  fn(arg);
  if (release) release(arg);
}

}  // namespace distaff
