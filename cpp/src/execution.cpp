#include "distaff/execution.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <unordered_set>

#include "distaff/scheduler.hpp"
#include "distaff/timer.hpp"
#include "detail/fork_locks.hpp"

namespace distaff {

namespace {
std::atomic<std::uint64_t> g_next_id{1};
std::atomic<std::int64_t> g_live{0};
SwitchHooks g_hooks{};

// The wait graph: who waits on whom. One mutex for the whole process, taken only on the slow path
// (a fiber that is about to park, a forward, a dependency registration), so cycle checks see a
// consistent graph. Two fibers on two workers that each start waiting on the other serialise here
// and the second one finds the cycle.
std::mutex g_graph_mu;

// fork(): the forking thread takes the locks its fiber can need in the child (detail/fork_locks.hpp),
// so each is copied free and consistent. Nothing that holds any of them waits for the GIL (which the
// forking thread holds) or for a lock taken before it in this order, so taking them cannot deadlock.
thread_local Execution* tl_fork_locked = nullptr;  // the forking execution whose locks are held

// Trampoline: completions triggered from inside completion callbacks are queued here and run by the
// outermost finish() on this fiber, so propagation along long chains is iterative.
struct Trampoline {
  std::vector<std::pair<ExecutionRef, void*>> pending;  // (execution, its callback list)
};

thread_local detail::FiberLocal tl_fiber_local;
}  // namespace

namespace detail {
struct DoneCvSpinlock {  // boost::fibers::condition_variable_any::wait_queue_splk_
  using type = boost::fibers::detail::spinlock boost::fibers::condition_variable_any::*;
  friend type member_of(DoneCvSpinlock);
};
template struct PrivateMember<DoneCvSpinlock, &boost::fibers::condition_variable_any::wait_queue_splk_>;

struct ForkLocks {
  static void before() noexcept DISTAFF_NO_THREAD_SAFETY_ANALYSIS {
    g_graph_mu.lock();
    Execution* self = tl_fiber_local.current;
    if (self) {
      self->mu_.lock();
      (self->done_cv_.*member_of(DoneCvSpinlock{})).lock();
    }
    tl_fork_locked = self;
    lock_fiber_scheduler_for_fork();
  }
  static void after() noexcept DISTAFF_NO_THREAD_SAFETY_ANALYSIS {  // in the parent and the child
    unlock_fiber_scheduler_after_fork();
    if (Execution* self = std::exchange(tl_fork_locked, nullptr)) {
      (self->done_cv_.*member_of(DoneCvSpinlock{})).unlock();
      self->mu_.unlock();
    }
    g_graph_mu.unlock();
  }
  ForkLocks() { pthread_atfork(&ForkLocks::before, &ForkLocks::after, &ForkLocks::after); }
};
}  // namespace detail

namespace {
detail::ForkLocks g_fork_locks;

// reaches: does a wait on `from` (transitively) lead back to `target`? Caller holds g_graph_mu.
bool reaches(Execution* from, Execution* target, const std::vector<ExecutionRef>* (*deps_of)(Execution*),
             Execution* (*blocked_of)(Execution*)) {
  std::vector<Execution*> stack{from};
  std::unordered_set<Execution*> seen;
  while (!stack.empty()) {
    Execution* e = stack.back();
    stack.pop_back();
    if (e == target) return true;
    if (!seen.insert(e).second || e->done()) continue;
    if (Execution* b = blocked_of(e)) stack.push_back(b);
    for (const ExecutionRef& d : *deps_of(e)) stack.push_back(d.get());
  }
  return false;
}
}  // namespace

namespace detail {
void assertion_failed(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "distaff: internal assertion failed: %s (%s:%d)\n", expr, file, line);
  std::fflush(stderr);
  throw InternalError(std::string("distaff internal assertion failed: ") + expr);
}

FiberLocal& fiber_local() noexcept { return tl_fiber_local; }

SuspendScope::SuspendScope(const Execution* on) noexcept : saved_(tl_fiber_local), token_(nullptr) {
  if (Execution* self = saved_.current) {
    if (Scheduler* s = self->owner()) s->notify(EventKind::suspend, *self, on ? on->id() : 0);
  }
  token_ = g_hooks.on_suspend ? g_hooks.on_suspend() : nullptr;
  tl_fiber_local = FiberLocal{};
}

SuspendScope::~SuspendScope() {
  // Another fiber may have run on this thread meanwhile and changed the slots: put ours back.
  tl_fiber_local = saved_;
  if (Execution* self = saved_.current) {
    if (Scheduler* s = self->owner()) s->notify(EventKind::resume, *self);
  }
  if (g_hooks.on_resume) g_hooks.on_resume(token_);
}
}  // namespace detail

const char* to_string(State s) noexcept {
  switch (s) {
    case State::pending: return "pending";
    case State::waiting: return "waiting";
    case State::running: return "running";
    case State::succeeded: return "succeeded";
    case State::failed: return "failed";
    case State::cancelled: return "cancelled";
  }
  return "?";
}

const std::string& Execution::no_workflow_id() noexcept {
  static const std::string empty;
  return empty;
}

const char* to_string(Kind k) noexcept { return k == Kind::workflow ? "workflow" : "task"; }

std::int64_t wall_time_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void set_switch_hooks(SwitchHooks hooks) noexcept { g_hooks = hooks; }

Execution* current_execution() noexcept { return tl_fiber_local.current; }

Execution* interruptible_execution() noexcept {
  Execution* self = tl_fiber_local.current;
  // A cancelled or timed-out execution is finished at once while its body still unwinds: its
  // later waits still return `interrupted` at once (interrupt()'s contract), so a body that
  // swallowed the asynchronous CancelledError cannot sleep on for good.
  return self && (!self->done() || self->interrupted()) ? self : nullptr;
}

std::int64_t live_executions() noexcept { return g_live.load(std::memory_order_relaxed); }

ExecutionRef Execution::create(std::string name, Kind kind) {
  return ExecutionRef(new Execution(std::move(name), kind), /*add_ref=*/false);
}

ExecutionRef Execution::promise(std::string name, Kind kind, std::uint64_t parent_id) {
  ExecutionRef p = create(std::move(name), kind);
  p->parent_id_ = parent_id;
  const bool started = p->start();
  DISTAFF_ASSERT(started && p->state() == State::running);
  (void)started;
  return p;
}

Execution::Execution(std::string name, Kind kind)
    : kind_(kind), id_(g_next_id.fetch_add(1, std::memory_order_relaxed)), name_(std::move(name)) {
  g_live.fetch_add(1, std::memory_order_relaxed);
}

Execution::~Execution() {
  DISTAFF_ASSERT(callbacks_ == nullptr || !is_terminal(state_.load()));
  // A pending deadline's queue entry holds a reference, so nothing armed can be destroyed.
  DISTAFF_ASSERT(deadline_ == nullptr);
  // An execution destroyed unfinished (never submitted) may still hold callbacks: free the nodes.
  for (CallbackNode* n = callbacks_; n;) {
    CallbackNode* next = n->next;
    delete n;
    n = next;
  }
  delete deps_info_.load(std::memory_order_acquire);
  g_live.fetch_sub(1, std::memory_order_relaxed);
}

Execution::DepsInfo& Execution::deps_info() {
  DepsInfo* info = deps_info_.load(std::memory_order_acquire);
  if (info) return *info;
  auto fresh = std::make_unique<DepsInfo>();
  if (deps_info_.compare_exchange_strong(info, fresh.get(), std::memory_order_acq_rel)) return *fresh.release();
  return *info;  // another thread installed one first
}

void Execution::DepsInfo::add_id(std::uint64_t id) {
  if (cap_ids == 1) {
    if (n_ids == 0) {
      ids.one = id;
      n_ids = 1;
      return;
    }
    auto* grown = new std::uint64_t[4];
    grown[0] = ids.one;
    ids.many = grown;
    cap_ids = 4;
  } else if (n_ids == cap_ids) {
    auto* grown = new std::uint64_t[std::size_t{cap_ids} * 2];
    std::copy(ids.many, ids.many + n_ids, grown);
    delete[] ids.many;
    ids.many = grown;
    cap_ids *= 2;
  }
  ids.many[n_ids++] = id;
}

std::span<const std::uint64_t> Execution::dependency_id_span() const noexcept {
  const DepsInfo* info = deps_info_if_any();
  if (!info) return {};
  return {info->id_data(), info->n_ids};
}

std::vector<std::uint64_t> Execution::dependency_ids() const {
  const std::span<const std::uint64_t> ids = dependency_id_span();
  return std::vector<std::uint64_t>(ids.begin(), ids.end());
}

void Execution::release() noexcept {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void Execution::add_dependency(const ExecutionRef& dep) {
  deps_info().add_id(dep->id());
}

bool Execution::start() noexcept {
  State s = state_.load(std::memory_order_acquire);
  while (!is_terminal(s)) {
    if (state_.compare_exchange_weak(s, State::running, std::memory_order_acq_rel)) {
      started_ns_.store(wall_time_ns(), std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

std::uint64_t Execution::blocked_on() const noexcept {
  std::lock_guard<std::mutex> g(g_graph_mu);
  return blocked_on_ ? blocked_on_->id() : 0;
}

namespace {
const std::vector<ExecutionRef>* deps_of(Execution* e);
Execution* blocked_of(Execution* e);
}  // namespace

// Accessors for the cycle walk (friends would drag the walk into the header).
struct ExecutionGraphAccess {
  static const std::vector<ExecutionRef>* deps(Execution* e) {
    static const std::vector<ExecutionRef> none;
    const Execution::DepsInfo* info = e->deps_info_if_any();
    return info ? &info->unfinished : &none;
  }
  static Execution* blocked(Execution* e) { return e->blocked_on_; }
  static void set_deps(Execution* e, std::vector<ExecutionRef> deps) {
    Execution::DepsInfo& info = e->deps_info();
    std::lock_guard<std::mutex> g(g_graph_mu);
    info.unfinished = std::move(deps);
    e->in_graph_.store(true, std::memory_order_release);
  }
  static void clear_deps(Execution* e) {
    std::lock_guard<std::mutex> g(g_graph_mu);
    if (Execution::DepsInfo* info = e->deps_info_.load(std::memory_order_acquire)) info->unfinished.clear();
  }
};

void Execution::link_dependencies(std::vector<ExecutionRef> deps) {
  ExecutionGraphAccess::set_deps(this, std::move(deps));
}
void Execution::unlink_dependencies() { ExecutionGraphAccess::clear_deps(this); }

void Execution::awaits_members(const std::vector<ExecutionRef>& members) {
  std::vector<ExecutionRef> unfinished;
  unfinished.reserve(members.size());
  for (const ExecutionRef& m : members) {
    if (!m->done()) unfinished.push_back(m);
  }
  if (unfinished.empty() || done()) return;
  ExecutionGraphAccess::set_deps(this, std::move(unfinished));
  // Finished meanwhile: finish() may have looked for links before these were set (in_graph_).
  if (done()) ExecutionGraphAccess::clear_deps(this);
}

namespace {
const std::vector<ExecutionRef>* deps_of(Execution* e) { return ExecutionGraphAccess::deps(e); }
Execution* blocked_of(Execution* e) { return ExecutionGraphAccess::blocked(e); }
}  // namespace

std::string Execution::deadlock_message(const Execution& waiter, const Execution& target) {
  if (&waiter == &target) {
    return "execution " + std::to_string(waiter.id()) + " (" + waiter.name() + ") waits on itself";
  }
  return "deadlock: execution " + std::to_string(waiter.id()) + " (" + waiter.name() +
         ") would wait on execution " + std::to_string(target.id()) + " (" + target.name() +
         "), which waits on it";
}

WaitStatus Execution::wait_until(Clock::time_point deadline) {
  if (done()) return WaitStatus::done;
  Execution* self = interruptible_execution();  // (a finished one is in no wait cycle either)
  if (self) {
    if (self->interrupted()) return WaitStatus::interrupted;
    std::lock_guard<std::mutex> g(g_graph_mu);
    if (reaches(this, self, deps_of, blocked_of)) throw DeadlockError(deadlock_message(*self, *this));
    self->blocked_on_ = this;
    self->in_graph_.store(true, std::memory_order_release);
  }
  WaitStatus status = WaitStatus::done;
  {
    detail::SuspendScope suspend(this);
    UniqueLock lk(mu_);
    while (!is_terminal(state_.load(std::memory_order_acquire))) {
      if (self && self->interrupted()) {
        status = WaitStatus::interrupted;
        break;
      }
      ++cv_waiters_;
      bool timed_out = false;
      if (deadline == Clock::time_point::max()) {
        done_cv_.wait(lk);
      } else {
        timed_out = done_cv_.wait_until(lk, deadline) == boost::fibers::cv_status::timeout;
      }
      --cv_waiters_;
      if (timed_out && !is_terminal(state_.load(std::memory_order_acquire))) {
        status = WaitStatus::timeout;
        break;
      }
    }
  }
  if (self) {
    std::lock_guard<std::mutex> g(g_graph_mu);
    self->blocked_on_ = nullptr;
  }
  return status;
}

WaitStatus sleep_until(Clock::time_point deadline) {
  Execution* self = tl_fiber_local.current;
  if (!self) {
    detail::SuspendScope suspend;
    std::this_thread::sleep_until(deadline);
    return WaitStatus::timeout;
  }
  // A cancelled or timed-out body (finished at once, still unwinding) never sleeps: interrupted.
  if (self->interrupted()) return WaitStatus::interrupted;
  if (self->done()) {
    // A done-callback running on the fiber of the execution it watched (interruptible_execution):
    // the execution cannot be cancelled any more, so this sleeps its full length (on the fiber).
    // It parks on the execution's condition variable, which nothing notifies now (a spurious or
    // stray wake-up just parks again).
    detail::SuspendScope suspend;
    UniqueLock lk(self->mu_);
    ++self->cv_waiters_;
    while (self->done_cv_.wait_until(lk, deadline) != boost::fibers::cv_status::timeout) {
    }
    --self->cv_waiters_;
    return WaitStatus::timeout;
  }
  // A sleeping execution parks on its own condition variable, so interrupt() can wake it.
  if (self->interrupted()) return WaitStatus::interrupted;
  {
    std::lock_guard<std::mutex> g(g_graph_mu);
    self->blocked_on_ = self;
    self->in_graph_.store(true, std::memory_order_release);
  }
  WaitStatus status = WaitStatus::timeout;
  {
    detail::SuspendScope suspend;
    UniqueLock lk(self->mu_);
    while (!self->interrupted() && !is_terminal(self->state_.load(std::memory_order_acquire))) {
      ++self->cv_waiters_;
      const bool timed_out = self->done_cv_.wait_until(lk, deadline) == boost::fibers::cv_status::timeout;
      --self->cv_waiters_;
      if (timed_out) break;
    }
    if (self->interrupted() || is_terminal(self->state_.load(std::memory_order_acquire))) {
      status = WaitStatus::interrupted;
    }
  }
  std::lock_guard<std::mutex> g(g_graph_mu);
  self->blocked_on_ = nullptr;
  return status;
}

void Execution::forward_to(Execution& target) {
  std::lock_guard<std::mutex> g(g_graph_mu);
  if (reaches(&target, this, deps_of, blocked_of)) throw DeadlockError(deadlock_message(*this, target));
  blocked_on_ = &target;
  in_graph_.store(true, std::memory_order_release);
}

void Execution::set_wait_edge(Execution& target) {
  std::lock_guard<std::mutex> g(g_graph_mu);
  if (reaches(&target, this, deps_of, blocked_of)) throw DeadlockError(deadlock_message(*this, target));
  blocked_on_ = &target;
  in_graph_.store(true, std::memory_order_release);
}

void Execution::clear_wait_edge(const Execution& target) noexcept {
  std::lock_guard<std::mutex> g(g_graph_mu);
  if (blocked_on_ == &target) blocked_on_ = nullptr;
}

bool Execution::parked() const noexcept {
  std::lock_guard<std::mutex> g(g_graph_mu);
  return blocked_on_ != nullptr || waker_fn_ != nullptr;
}

void Execution::set_waker(void (*fn)(void*), void* arg) noexcept {
  std::lock_guard<std::mutex> g(g_graph_mu);
  waker_fn_ = fn;
  waker_arg_ = arg;
}

bool Execution::would_deadlock(Execution& target) const {
  std::lock_guard<std::mutex> g(g_graph_mu);
  return reaches(&target, const_cast<Execution*>(this), deps_of, blocked_of);
}

void Execution::interrupt() noexcept {
  interrupt_.store(true, std::memory_order_release);
  Execution* on = nullptr;
  std::lock_guard<std::mutex> g(g_graph_mu);
  if (waker_fn_) waker_fn_(waker_arg_);
  on = blocked_on_;
  if (on) {
    // Take the target's mutex so the notify cannot slip between the waiter's check and its park.
    std::lock_guard<std::mutex> lk(on->mu_);
    if (on->cv_waiters_ != 0) on->done_cv_.notify_all();
  }
}

void Execution::add_child(const ExecutionRef& child) {
  std::lock_guard<std::mutex> lk(mu_);
  if (is_terminal(state_.load(std::memory_order_relaxed))) return;
  // Drop finished children now and then, so a long-lived parent does not hoard records.
  if (children_.size() >= 64 && (children_.size() & (children_.size() - 1)) == 0) {
    std::erase_if(children_, [](const ExecutionRef& c) { return c->done(); });
  }
  children_.push_back(child);
}

std::vector<ExecutionRef> Execution::children() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<ExecutionRef> out;
  for (const ExecutionRef& c : children_) {
    if (!c->done()) out.push_back(c);
  }
  return out;
}

bool Execution::terminate_tree(TreeFinisher finisher, void* arg) {
  // One step: children and parked status first, then the interrupt, then the embedder's finish.
  auto stop = [&](Execution& e, std::vector<ExecutionRef>& kids) {
    kids = e.children();
    const bool was_parked = e.parked();
    e.interrupt();
    const bool finished = finisher(e, was_parked, arg);
    DISTAFF_ASSERT(!finished || e.done());
    return finished;
  };
  if (done()) return false;
  std::vector<ExecutionRef> pending;
  if (!stop(*this, pending)) return false;
  std::vector<ExecutionRef> kids;
  while (!pending.empty()) {
    ExecutionRef e = std::move(pending.back());
    pending.pop_back();
    if (e->done() || !stop(*e, kids)) continue;
    for (ExecutionRef& c : kids) pending.push_back(std::move(c));
  }
  return true;
}

void Execution::add_callback(Callback cb, void* arg) {
  // Terminal is final and published with release by finish(): no lock needed to see it (a wait-set
  // over 100k mostly finished executions registers on each).
  if (!is_terminal(state_.load(std::memory_order_acquire))) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!is_terminal(state_.load(std::memory_order_relaxed))) {
      callbacks_ = new CallbackNode{cb, arg, callbacks_};
      return;
    }
  }
  cb(*this, arg);
}

bool Execution::remove_callback(Callback cb, void* arg) noexcept {
  // Terminal is published with the list taken (both under mu_ in finish_impl): a terminal
  // execution has no list left to search, its callbacks run (or ran) on the finishing thread.
  if (is_terminal(state_.load(std::memory_order_acquire))) return false;
  CallbackNode* found = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (CallbackNode** p = &callbacks_; *p; p = &(*p)->next) {
      if ((*p)->fn == cb && (*p)->arg == arg) {
        found = *p;
        *p = found->next;
        break;
      }
    }
  }
  delete found;
  return found != nullptr;
}

std::size_t Execution::callback_count() const noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  std::size_t n = 0;
  for (const CallbackNode* p = callbacks_; p; p = p->next) ++n;
  return n;
}

bool Execution::finish(State terminal) noexcept { return finish_impl(terminal, false); }

bool Execution::cancel_if_not_started() noexcept { return finish_impl(State::cancelled, true); }

bool Execution::finish_impl(State terminal, bool only_if_not_started) noexcept {
  DISTAFF_ASSERT(is_terminal(terminal));
  CallbackNode* list;
  ArmedDeadline* deadline;  // released outside the lock
  std::vector<ExecutionRef> dropped_children;  // released outside the lock
  {
    std::lock_guard<std::mutex> lk(mu_);
    // start() moves pending/waiting → running without the mutex, so the transition is a CAS loop.
    State s = state_.load(std::memory_order_acquire);
    do {
      if (is_terminal(s)) return false;
      if (only_if_not_started && s != State::pending && s != State::waiting) return false;
    } while (!state_.compare_exchange_weak(s, terminal, std::memory_order_acq_rel));
    finished_ns_.store(wall_time_ns(), std::memory_order_relaxed);
    if (owner_) {
      owner_->finished_.fetch_add(1, std::memory_order_relaxed);
      owner_->notify(EventKind::finish, *this);
    }
    list = std::exchange(callbacks_, nullptr);
    // Taken with the transition: from here the timer thread finds no deadline to fire (timer.hpp).
    deadline = std::exchange(deadline_, nullptr);
    dropped_children.swap(children_);
    // Notify under mu_, which every waiter re-acquires before its wait returns. Boost.Fiber 1.74
    // wakes a context on another thread by touching that thread's scheduler *after* releasing its
    // own locks (scheduler::schedule_from_remote, round_robin::notify); a woken plain thread that
    // returned at once and exited would free that scheduler while we are still inside notify_all
    // (TSan: pthread_cond_broadcast vs pthread_cond_destroy). Holding mu_ keeps the waiter in its
    // wait until the notify is complete. The same holds for workers: scheduler.cpp. Only when
    // someone waits (cv_waiters_, execution.hpp): a notify costs a stack page otherwise.
    if (cv_waiters_ != 0) done_cv_.notify_all();
  }
  if (in_graph_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> g(g_graph_mu);
    if (DepsInfo* info = deps_info_.load(std::memory_order_acquire)) info->unfinished.clear();
    blocked_on_ = nullptr;
  }
  // Keep ourselves alive through the release hook, the callbacks and the owner's bookkeeping.
  ExecutionRef keep(this);
  if (deadline) Timer::release_taken(*this, deadline);
  if (list) {
    // Callbacks were pushed LIFO: reverse to run them in registration order.
    CallbackNode* rev = nullptr;
    while (list) {
      CallbackNode* next = list->next;
      list->next = rev;
      rev = list;
      list = next;
    }
    auto* tramp = static_cast<Trampoline*>(tl_fiber_local.trampoline);
    if (tramp) {
      tramp->pending.emplace_back(keep, rev);
    } else {
      Trampoline local;
      tl_fiber_local.trampoline = &local;
      run_callbacks(*this, rev);
      for (std::size_t i = 0; i < local.pending.size(); ++i) {
        // Take the entry out by value: its callbacks append to `pending` (that is the point) and may
        // reallocate it, so no reference into the vector may live across run_callbacks.
        ExecutionRef ex = std::move(local.pending[i].first);
        run_callbacks(*ex, static_cast<CallbackNode*>(local.pending[i].second));
      }
      tl_fiber_local.trampoline = nullptr;
    }
  }
  if (owner_) owner_->on_finished(*this);
  return true;
}

void Execution::run_callbacks(Execution& ex, CallbackNode* list) noexcept {
  while (list) {
    CallbackNode* next = list->next;
    list->fn(ex, list->arg);
    delete list;
    list = next;
  }
}

}  // namespace distaff
