#include "distaff/scheduler.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <optional>
#include <unordered_set>

#include <cxxabi.h>

#include <boost/fiber/algo/round_robin.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/core/ignore_unused.hpp>
#include <boost/fiber/operations.hpp>
#include <boost/version.hpp>

#include "detail/fatal_signal.hpp"
#include "detail/fork_locks.hpp"
#include "distaff/detail/idle_signals.hpp"
#include "detail/stack_allocator.hpp"

namespace distaff {

// How many ready executions a worker turns into fibers before letting them run. Small enough that
// 1M queued executions never become 1M stacks at once; large enough to amortise the queue lock.
constexpr std::size_t kBatch = 64;
// The owner of a local queue takes from the newest group of records; every kFairEvery takes, the
// oldest record instead if it has waited longer than kFairAgeNs (take_work).
constexpr unsigned kFairEvery = 32;
constexpr std::int64_t kFairAgeNs = 20'000'000;
// Cached stacks a worker keeps when it goes idle (peak concurrency is cached while busy).
constexpr std::size_t kIdleStackCache = 256;
// A worker idle this long with no fibers trims its caches (stacks beyond kIdleStackCache, the
// bindings' thread states) and gives back what its cached stacks touched below their top pages.
// Not at once: a program that runs bursts back to back would pay for growing the pools again
// (a new thread state costs 20-27 us) — measured, trimming at once made warm fib(20) 2x slower.
constexpr std::chrono::milliseconds kIdleTrim{1000};

enum WorkerStatus : int { kUnused, kRunning, kRetired };

struct Scheduler::Worker {
  Worker(unsigned i, std::size_t stack_size) : index(i), stacks(stack_size) {}
  unsigned index;
  std::thread thread;
  std::atomic<int> status{kUnused};
  bool extra = false;                          // elastic: retires when idle (set before the thread starts)
  std::atomic<std::uint64_t> switches{0};      // fiber switches so far (worker writes, monitor reads)
  std::atomic<bool> blocked{false};            // the thread waits for a ready fiber (idle, not stuck)
  std::uint64_t seen = 0;                      // monitor only: `switches` at the last tick
  int still = 0;                               // monitor only: ticks in a row without a switch
  std::mutex mu;
  std::deque<Execution*> local DISTAFF_GUARDED_BY(mu);  // ready records: the owner takes the newest, thieves the oldest
  std::size_t fresh_from DISTAFF_GUARDED_BY(mu) = 0;    // local[fresh_from..] was pushed since the owner's last take
  unsigned takes DISTAFF_GUARDED_BY(mu) = 0;            // owner takes since the last fairness check
  bool parked DISTAFF_GUARDED_BY(mu) = false;           // the dispatcher sleeps in cv
  boost::fibers::condition_variable_any cv;
  std::int64_t fibers = 0;             // started, not ended (worker thread only)
  detail::StackPool stacks;            // worker thread only
  // Calls into the observer in flight on this worker (Scheduler::notify_slow): a counter per
  // worker, on a line of its own, so that recording does not bounce one cache line between threads.
  alignas(64) std::atomic<int> observing{0};
};

namespace {
thread_local Scheduler* tl_scheduler = nullptr;
thread_local void* tl_worker = nullptr;
class WorkerAlgorithm;
thread_local WorkerAlgorithm* tl_algorithm = nullptr;  // this worker thread's (keep_only_current_fiber)

// WorkerAlgorithm: Boost's round robin (fibers stay on their thread), plus a hook right before the
// OS thread blocks for lack of ready fibers, and the progress signals the elastic monitor reads: a
// switch counter and a "waiting for a ready fiber" flag.
class WorkerAlgorithm final : public boost::fibers::algo::round_robin {
 public:
  WorkerAlgorithm(const std::function<void()>* before_block, std::atomic<std::uint64_t>* switches,
                  std::atomic<bool>* blocked, detail::StackPool* stacks) noexcept
      : before_block_(before_block), switches_(switches), blocked_(blocked), stacks_(stacks) {
    tl_algorithm = this;
  }
  ~WorkerAlgorithm() override { tl_algorithm = nullptr; }
  // keep_only: from now on, only `ctx` (and the dispatcher) ever runs on this thread.
  void keep_only(boost::fibers::context* ctx) noexcept { only_ = ctx; }
  void awakened(boost::fibers::context* ctx) noexcept override {
    if (may_run(ctx)) round_robin::awakened(ctx);  // otherwise dropped: never resumed (a forked child)
  }
  boost::fibers::context* pick_next() noexcept override {
    boost::fibers::context* next = round_robin::pick_next();
    while (next && !may_run(next)) next = round_robin::pick_next();  // queued before the fork
    if (next) {
      // Only this thread writes: a plain increment, no lock prefix.
      switches_->store(switches_->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      // A fiber on a stack without a static guard gets its guard page armed before it runs
      // (stack_allocator.hpp); a worker whose stacks all have static guards pays one branch.
      if (stacks_->has_dynamic() && next->is_context(boost::fibers::type::worker_context)) stacks_->arm(next);
    }
    return next;
  }
  // suspend_until and notify are Boost's round_robin ones (1.74), on a mutex of ours, so that a
  // fork can take it (fork_locks.hpp): round_robin's is private.
  void suspend_until(std::chrono::steady_clock::time_point const& tp) noexcept override {
    blocked_->store(true, std::memory_order_relaxed);
    if (*before_block_) (*before_block_)();
    {
      std::unique_lock<std::mutex> lk(mtx_);
      if (!flag_) {
        detail::IdleSignalsBlocked quiet;  // an idle worker leaves Ctrl-C to the main thread
        if (tp == (std::chrono::steady_clock::time_point::max)()) {
          cnd_.wait(lk, [this] { return flag_; });
        } else {
          cnd_.wait_until(lk, tp, [this] { return flag_; });
        }
      }
      flag_ = false;
    }
    blocked_->store(false, std::memory_order_relaxed);
  }
  void notify() noexcept override {
    std::unique_lock<std::mutex> lk(mtx_);
    flag_ = true;
    lk.unlock();
    cnd_.notify_all();
  }
  void lock_for_fork() noexcept { mtx_.lock(); }
  void unlock_after_fork() noexcept { mtx_.unlock(); }

 private:
  const std::function<void()>* before_block_;
  std::atomic<std::uint64_t>* switches_;
  std::atomic<bool>* blocked_;
  detail::StackPool* stacks_;
  boost::fibers::context* only_ = nullptr;  // keep_only_current_fiber (a forked child), else null
  std::mutex mtx_;
  std::condition_variable cnd_;
  bool flag_ = false;  // notified: the next suspend_until returns at once

  // may_run: false for a context that must never run again on this thread. The dispatcher always
  // may: it moves woken fibers to the ready queue and blocks the thread while none is ready.
  bool may_run(boost::fibers::context* ctx) const noexcept {
    return only_ == nullptr || ctx == only_ || ctx->is_context(boost::fibers::type::dispatcher_context);
  }
};
}  // namespace

Scheduler::Scheduler(SchedulerOptions options) : opts_(std::move(options)) {
  if (!opts_.run) throw std::invalid_argument("SchedulerOptions::run is required");
  if (opts_.workers == 0) throw std::invalid_argument("workers must be at least 1");
  if (opts_.stack_size < kStackSizeMin || opts_.stack_size > kStackSizeMax) {
    throw std::invalid_argument("stack_size must be between 64 KiB and 1 GiB");
  }
  detail::install_fatal_signal_handler();
  pthread_sigmask(SIG_SETMASK, nullptr, &worker_mask_);
  const unsigned cap = std::max(opts_.workers, opts_.max_workers);
  for (unsigned i = 0; i < cap; ++i) {
    workers_.push_back(std::make_unique<Worker>(i, opts_.stack_size));
  }
  for (unsigned i = 0; i < opts_.workers; ++i) {
    workers_[i]->status.store(kRunning, std::memory_order_relaxed);
    start_worker(*workers_[i]);
  }
  active_.store(opts_.workers, std::memory_order_release);
  threads_.store(opts_.workers, std::memory_order_relaxed);
  if (cap > opts_.workers) monitor_ = std::thread([this] { monitor_main(); });
}

void Scheduler::start_worker(Worker& w) {
  Worker* wp = &w;
  w.thread = std::thread([this, wp] { worker_main(*wp); });
}

Scheduler::~Scheduler() {
  bool joinable = monitor_.joinable();
  for (auto& w : workers_) joinable = joinable || w->thread.joinable();
  if (joinable) {
    close(false);
    join();
  }
}

void set_stack_guard_limit(std::size_t limit) noexcept { detail::StackPool::set_guard_limit(limit); }
std::size_t stack_guard_limit() noexcept { return detail::StackPool::guard_limit(); }

void* fiber_scratch() noexcept {
  if (tl_scheduler == nullptr) return nullptr;  // not a worker thread: no slot of ours
  boost::fibers::context* ctx = boost::fibers::context::active();
  if (ctx == nullptr || !ctx->is_context(boost::fibers::type::worker_context)) return nullptr;
  const detail::SlotInfo* info = detail::StackPool::slot_of(ctx);
  return info ? detail::StackPool::scratch_of(info) : nullptr;
}

bool keep_only_current_fiber() noexcept {
  if (tl_scheduler == nullptr || tl_algorithm == nullptr) return false;
  boost::fibers::context* ctx = boost::fibers::context::active();
  if (ctx == nullptr || !ctx->is_context(boost::fibers::type::worker_context)) return false;
  tl_algorithm->keep_only(ctx);
  return true;
}

namespace detail {
struct RemoteReadySpinlock {  // boost::fibers::scheduler::remote_ready_splk_
  using type = boost::fibers::detail::spinlock boost::fibers::scheduler::*;
  friend type member_of(RemoteReadySpinlock);
};
template struct PrivateMember<RemoteReadySpinlock, &boost::fibers::scheduler::remote_ready_splk_>;

void lock_fiber_scheduler_for_fork() noexcept {
  if (tl_algorithm == nullptr) return;  // not a worker thread
  boost::fibers::scheduler* s = boost::fibers::context::active()->get_scheduler();
  (s->*member_of(RemoteReadySpinlock{})).lock();
  tl_algorithm->lock_for_fork();
}

void unlock_fiber_scheduler_after_fork() noexcept {
  if (tl_algorithm == nullptr) return;
  tl_algorithm->unlock_after_fork();
  boost::fibers::scheduler* s = boost::fibers::context::active()->get_scheduler();
  (s->*member_of(RemoteReadySpinlock{})).unlock();
}
}  // namespace detail

bool Scheduler::on_worker() const noexcept { return tl_scheduler == this; }

int Scheduler::worker_index() const noexcept {
  return tl_scheduler == this ? static_cast<int>(static_cast<Worker*>(tl_worker)->index) : -1;
}

std::shared_ptr<Observer> Scheduler::set_observer(std::shared_ptr<Observer> obs) {
  std::lock_guard<std::mutex> g(observer_mu_);
  observer_.store(obs.get(), std::memory_order_seq_cst);
  // Every notifier that read the old pointer incremented its counter before re-reading it
  // (notify_slow); once every counter is zero, none is inside the old observer any more. (Dekker:
  // the store and the notifier's increment are both seq_cst, so one of the two sees the other.)
  for (const auto& w : workers_) {
    while (w->observing.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  }
  while (observer_users_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  std::swap(observer_owner_, obs);
  return obs;
}

void Scheduler::notify_slow(EventKind kind, Execution& ex, std::uint64_t blocked_on) noexcept {
  if (tl_scheduler == this) {
    // A worker's counter is written by that worker only, and never nests (on_event does not call
    // back): a seq_cst store (one fence) announces the call, a release store ends it.
    Worker* w = static_cast<Worker*>(tl_worker);
    w->observing.store(1, std::memory_order_seq_cst);
    if (Observer* o = observer_.load(std::memory_order_seq_cst)) {
      o->on_event(Event{kind, ex.state(), static_cast<std::int32_t>(w->index), monotonic_ns(), &ex, blocked_on});
    }
    w->observing.store(0, std::memory_order_release);
    return;
  }
  observer_users_.fetch_add(1, std::memory_order_seq_cst);
  if (Observer* o = observer_.load(std::memory_order_seq_cst)) {
    o->on_event(Event{kind, ex.state(), -1, monotonic_ns(), &ex, blocked_on});
  }
  observer_users_.fetch_sub(1, std::memory_order_release);
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.live = live_.load();
  s.fibers = fibers_.load();
  s.threads = threads_.load();
  s.grown = grown_.load();
  s.finished = finished_.load();  // first: every execution it counts was submitted before this read
  s.submitted = submitted_.load();
  s.queued = inject_size_.load();
  return s;
}

void Scheduler::submit(const ExecutionRef& ex, const std::vector<ExecutionRef>& deps) {
  if (closed_.load(std::memory_order_acquire)) throw ShutdownError("the engine is shut down");
  DISTAFF_ASSERT(ex->state() == State::pending && ex->owner_ == nullptr);
  ex->owner_ = this;
  ex->submitted_ns_.store(wall_time_ns(), std::memory_order_relaxed);
  live_.fetch_add(1, std::memory_order_relaxed);
  submitted_.fetch_add(1, std::memory_order_relaxed);
  if (deps.empty()) {
    notify(EventKind::submit, *ex);  // before the queue: a worker may start it at once
    ex->retain();  // the queue's reference, handed to the fiber
    enqueue_ready(ex.get());
    return;
  }
  ex->deps_info();  // allocated before any state changes: the only step below that can throw
  ex->state_.store(State::waiting, std::memory_order_release);
  notify(EventKind::submit, *ex);  // before the dependencies are linked: they may release it at once
  ex->deps_left_.store(static_cast<std::uint32_t>(deps.size() + 1), std::memory_order_relaxed);
  ex->link_dependencies(deps);
  ex->retain();  // the parked reference: released (or handed to the queue) when the count hits 0
  {
    std::lock_guard<std::mutex> g(parked_mu_);
    parked_.insert(ex.get());
  }
  for (const ExecutionRef& d : deps) d->add_callback(&Scheduler::on_dependency_done, ex.get());
  // The extra count kept callbacks that fire during registration from resolving early.
  on_dependency_done(*ex, ex.get());
}

// on_dependency_done: one dependency of `arg` finished (or, with dep == arg, registration ended).
void Scheduler::on_dependency_done(Execution& dep, void* arg) {
  auto* ex = static_cast<Execution*>(arg);
  Scheduler* self = ex->owner_;
  if (&dep != ex && dep.state() != State::succeeded) {
    Execution* expected = nullptr;
    dep.retain();
    if (ex->deps_info().failed.compare_exchange_strong(expected, &dep, std::memory_order_acq_rel)) {
      // Fail fast: the dependent is abandoned now, not when its last dependency ends.
      if (self->opts_.abandon) {
        self->opts_.abandon(*ex, dep);
      } else {
        ex->finish(State::cancelled);
      }
    } else {
      dep.release();
    }
  }
  if (ex->deps_left_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Last one: unpark.
  {
    std::lock_guard<std::mutex> g(self->parked_mu_);
    self->parked_.erase(ex);
  }
  ex->unlink_dependencies();
  if (Execution* failed = ex->deps_info().failed.exchange(nullptr)) {
    failed->release();
    ex->release();  // the parked reference
  } else {
    // Ready: `waiting` (for dependencies) turns `pending` (queued), unless a cancel finished it
    // meanwhile. A worker that dequeues it while draining (close(true), cancel_bodies()) does not
    // start it, and run() must see it not started: a record that became ready while close(true)
    // swept the queues is in neither list it swept (parked_ after queues), and run() cancelled
    // only `pending` ones — one left `waiting` stayed unfinished, and shutdown waited forever.
    State expected = State::waiting;
    ex->state_.compare_exchange_strong(expected, State::pending, std::memory_order_acq_rel);
    self->notify(EventKind::ready, *ex);
    self->enqueue_ready(ex);  // hands the parked reference to the queue
  }
}

void Scheduler::enqueue_ready(Execution* ex) {
  if (tl_scheduler == this) {
    // A child stays on its parent's worker, in its local queue (taken newest group first: depth
    // first, see take_work). A worker that idles is woken to steal from it (the oldest records):
    // bodies that block still spread over the workers, and a recursion of waits still unfolds
    // depth first on each worker instead of breadth first through the shared queue.
    auto* w = static_cast<Worker*>(tl_worker);
    {
      std::lock_guard<std::mutex> g(w->mu);
      w->local.push_back(ex);
      if (std::exchange(w->parked, false)) w->cv.notify_one();  // under w->mu: see join()
    }
    // A worker that announced itself idle after the check above re-checks the local queues, and one
    // that announced it before this push is woken here: see others_have_local_work.
    if (idle_.load(std::memory_order_seq_cst) > 0) wake_one_idle();
    return;
  }
  {
    std::lock_guard<std::mutex> g(inject_mu_);
    inject_.push_back(ex);
    inject_size_.fetch_add(1, std::memory_order_seq_cst);
  }
  if (idle_.load(std::memory_order_seq_cst) > 0) wake_one_idle();
}

// others_have_local_work: some other worker's local queue holds records (which `w` could steal).
// Called by a parking worker after idle_ += 1: a body's child pushed to its worker's local queue
// is either seen here, or its submitter sees idle_ > 0 and wakes a parked worker (enqueue_ready) —
// each side checks under the queue's mutex or after it, so a child of a body that then blocks its
// thread is never stranded while a worker sleeps.
bool Scheduler::others_have_local_work(Worker& w) {
  for (unsigned i = 0, n = active_.load(std::memory_order_acquire); i < n; ++i) {
    Worker* other = workers_[i].get();
    if (other == &w) continue;
    std::lock_guard<std::mutex> g(other->mu);
    if (!other->local.empty()) return true;
  }
  return false;
}

void Scheduler::wake_one_idle() {
  for (unsigned i = 0, n = active_.load(std::memory_order_acquire); i < n; ++i) {
    Worker* w = workers_[i].get();
    std::lock_guard<std::mutex> g(w->mu);
    if (std::exchange(w->parked, false)) {
      w->cv.notify_one();  // under w->mu: see join()
      return;
    }
  }
}

// take_work: the next execution for `w` to start, or nullptr. Whatever else it takes in the same
// lock (a batch from the inject queue, half of another worker's local queue) goes to w's own local
// queue, where it stays stealable: executions become fibers one at a time, because a fiber never
// leaves its worker — a batch turned into fibers at once would be stranded behind a body that
// blocks its thread (time.sleep), out of reach of the workers the elastic monitor adds.
Execution* Scheduler::take_work(Worker& w, std::vector<Execution*>& buf) {
  {
    std::lock_guard<std::mutex> g(w.mu);
    if (!w.local.empty()) {
      // Newest group first, each group in submission order. A group is what was pushed since the
      // owner's last take (the children a body just submitted, or an inject batch's rest): it is
      // reversed in place, then the owner pops from the back. So a body's children run before its
      // older siblings and a recursion of waits unfolds depth first — fib(20), every call a task
      // waiting on two children, keeps ~40 fibers alive instead of ~6,800 (~6,800 stacks and
      // thread states a first run had to create) — while siblings, and work submitted from
      // outside, start in the order they were submitted. Thieves take the oldest (the front).
      // Fairness: every kFairEvery takes, the oldest record is taken instead if it has waited
      // longer than kFairAgeNs, so a body that keeps submitting cannot starve older records.
      if (w.fresh_from < w.local.size()) {
        std::reverse(w.local.begin() + static_cast<std::ptrdiff_t>(w.fresh_from), w.local.end());
      }
      Execution* ex;
      if (++w.takes >= kFairEvery && w.local.size() > 1 &&
          wall_time_ns() - w.local.front()->submitted_ns() > kFairAgeNs) {
        w.takes = 0;
        ex = w.local.front();
        w.local.pop_front();
      } else {
        if (w.takes >= kFairEvery) w.takes = 0;
        ex = w.local.back();
        w.local.pop_back();
      }
      w.fresh_from = w.local.size();
      return ex;
    }
  }
  buf.clear();
  if (inject_size_.load(std::memory_order_seq_cst) > 0) {
    // While other workers idle, take one at a time and wake one of them for the rest: a burst of
    // bodies that block (time.sleep, sockets) then spreads over the workers at once.
    const bool others_idle = idle_.load(std::memory_order_seq_cst) > 0;
    const std::size_t limit = others_idle ? 1 : kBatch;
    bool more;
    {
      std::lock_guard<std::mutex> g(inject_mu_);
      while (!inject_.empty() && buf.size() < limit) {
        buf.push_back(inject_.front());
        inject_.pop_front();
      }
      inject_size_.fetch_sub(static_cast<std::int64_t>(buf.size()), std::memory_order_seq_cst);
      more = !inject_.empty();
    }
    if (more && others_idle) wake_one_idle();
  }
  if (buf.empty()) {
    // Steal half of another worker's local queue (oldest first: they were waiting longest).
    for (unsigned i = 0, n = active_.load(std::memory_order_acquire); i < n && buf.empty(); ++i) {
      Worker* other = workers_[i].get();
      if (other == &w) continue;
      if (!other->mu.try_lock()) continue;
      std::lock_guard<std::mutex> g(other->mu, std::adopt_lock);
      std::size_t half = (other->local.size() + 1) / 2;
      while (half-- > 0 && buf.size() < kBatch) {
        buf.push_back(other->local.front());
        other->local.pop_front();
        if (other->fresh_from > 0) --other->fresh_from;
      }
    }
  }
  if (buf.empty()) return nullptr;
  if (buf.size() > 1) {
    {
      std::lock_guard<std::mutex> g(w.mu);
      w.local.insert(w.local.end(), buf.begin() + 1, buf.end());  // a new group (see above)
    }
    if (idle_.load(std::memory_order_seq_cst) > 0) wake_one_idle();  // see others_have_local_work
  }
  return buf.front();
}

namespace detail {
// FiberMain: the function of every worker fiber. A named type (not a lambda) so that the fiber's
// end can be specialised below.
struct FiberMain {
  Scheduler* scheduler;
  Scheduler::Worker* worker;
  Execution* ex;
  void operator()() const { scheduler->run_fiber(*worker, ex); }
};
}  // namespace detail

}  // namespace distaff

// The end of a worker fiber without a second stack page. A fiber's last act is Boost's
// context::terminate() (compiled into libboost_fiber), which takes the context's spinlock with
// the *library's* spinlock_ttas::lock(): its 5 KiB frame and the call to the TLS resolver at the
// bottom of that frame (cpp/include/distaff/detail/boost_spinlock_ttas.hpp) touched a page 7.3 KiB
// below the top of every fiber stack as it ended. The stack went back to the pool with two pages
// resident, so after a burst every cached stack held 8 KiB instead of 4 (measured: 10,000 parked
// sleepers 4.98 KiB each, 9 KiB each once they had ended and their stacks were cached; W5's peak).
// So the run_ of our fibers' worker_context does what context::terminate() does in Boost 1.74
// (context.cpp: under the context's lock, mark it terminated, make its joiners ready, then clean
// up its fiber-specific data and hand it to scheduler::terminate, which releases the lock and
// switches away), with distaff's spinlock, compiled here. worker_context is a friend of context;
// the members used are the 1.74 layout, hence the exact version check (other versions run Boost's
// own terminate(): the same behaviour, one more page per cached stack). Our fibers are detached,
// so the wait queue (joiners) is always empty, and they keep no fiber-specific data; both are
// still handled as Boost does. tests/python/test_frame_stack.py (sleepers after they end).
#if BOOST_VERSION == 107400 && defined(DISTAFF_DETAIL_BOOST_SPINLOCK_TTAS_HPP) && \
    !defined(BOOST_USE_UCONTEXT) && !defined(BOOST_USE_WINFIB)
namespace boost::fibers {
template <>
boost::context::fiber worker_context<distaff::detail::FiberMain>::run_(boost::context::fiber&& c) {
  boost::ignore_unused(c);
  {
    auto fn = std::move(fn_);  // destroyed before the context terminates, as in Boost's run_
    fn();
  }
  detail::spinlock_lock lk{splk_};
  terminated_ = true;
  while (!wait_queue_.empty()) {
    context* joiner = &wait_queue_.front();
    wait_queue_.pop_front();
    schedule(joiner);
  }
  for (auto& data : fss_data_) data.second.do_cleanup();
  fss_data_.clear();
  return get_scheduler()->terminate(lk, this);
}
}  // namespace boost::fibers
#endif

namespace distaff {

void Scheduler::run_fiber(Worker& w, Execution* ex) {
  ExecutionRef ref(ex, /*add_ref=*/false);  // the queue's reference
  // While draining (close(true), cancel_bodies()), nothing more starts: run() sees the
  // execution still pending and cancels it (so its completion callbacks fire like any other's).
  bool started = false;
  if (!draining_.load(std::memory_order_acquire) && ex->start()) {
    detail::fiber_local() = detail::FiberLocal{ex, nullptr};
    started = true;
    notify(EventKind::start, *ex);
  }
  // run() is called for every dequeued execution, also one cancelled while queued (its state
  // is then terminal), so the embedder can release what it attached to the payload.
  try {
    opts_.run(*ex);
#if defined(__GLIBCXX__)  // libstdc++'s; `make thread-safety` parses this file against libc++
  } catch (abi::__forced_unwind&) {
    throw;  // thread cancellation (pthread_exit) must unwind, never be swallowed
#endif
  } catch (const std::exception& e) {
    // The embedder's run must not throw (an exception escaping a fiber would terminate): a
    // bug in the embedder, said on stderr rather than dropped, and the execution fails.
    std::fprintf(stderr, "distaff: internal error: run() of execution %llu '%s' threw: %s\n",
                 static_cast<unsigned long long>(ex->id()), ex->name().c_str(), e.what());
    ex->finish(State::failed);
  } catch (...) {
    std::fprintf(stderr, "distaff: internal error: run() of execution %llu '%s' threw\n",
                 static_cast<unsigned long long>(ex->id()), ex->name().c_str());
    ex->finish(State::failed);
  }
  if (started) notify(EventKind::end, *ex);
  detail::fiber_local() = detail::FiberLocal{};
  ref = ExecutionRef();
  --w.fibers;
  fibers_.fetch_sub(1, std::memory_order_relaxed);
  if (w.fibers == 0) {
    // The last fiber ended: wake the dispatcher if it sleeps, so it starts the idle timer
    // that trims what a burst left behind (and exits, when stopping) rather than waiting
    // for the next submission.
    std::lock_guard<std::mutex> g(w.mu);
    if (std::exchange(w.parked, false)) w.cv.notify_one();
  }
}

void Scheduler::worker_main(Worker& w) {
  tl_scheduler = this;
  tl_worker = &w;
  detail::name_this_thread(("distaff-w" + std::to_string(w.index)).c_str());
  detail::AltSignalStack alt_stack;  // room for a fatal-signal report when a fiber's stack has none
  boost::fibers::use_scheduling_algorithm<WorkerAlgorithm>(&opts_.on_worker_block, &w.switches, &w.blocked,
                                                           &w.stacks);
  if (opts_.on_worker_start) opts_.on_worker_start(w.index);
  std::vector<Execution*> batch;
  batch.reserve(kBatch);
  for (;;) {
    if (Execution* ex = take_work(w, batch)) {
      ++w.fibers;
      fibers_.fetch_add(1, std::memory_order_relaxed);
      try {
        boost::fibers::fiber f(std::allocator_arg, detail::PooledStack{&w.stacks}, detail::FiberMain{this, &w, ex});
        f.detach();
      } catch (const std::bad_alloc&) {
        // No stack could be mapped (memory or vm.max_map_count exhausted): this execution fails,
        // the engine goes on.
        --w.fibers;
        fibers_.fetch_sub(1, std::memory_order_relaxed);
        if (opts_.start_failed) {
          opts_.start_failed(*ex);
        } else {
          ex->finish(State::failed);
        }
        ex->release();  // the queue's reference
        continue;
      }
      boost::this_fiber::yield();  // let the new fiber run (until it ends, parks or blocks)
      continue;
    }
    if (stopping_.load(std::memory_order_acquire) && w.fibers == 0) break;
    if (opts_.before_park) opts_.before_park(w.index);
    UniqueLock lk(w.mu);
    if (!w.local.empty()) continue;
    w.parked = true;
    idle_.fetch_add(1, std::memory_order_seq_cst);
    // Re-check after announcing idleness: a submitter that missed idle_ > 0 pushed before this.
    bool stop_now = stopping_.load(std::memory_order_acquire) && w.fibers == 0;
    bool work = inject_size_.load(std::memory_order_seq_cst) > 0 || stop_now;
    if (!work) {
      // Not under our own mutex: others_have_local_work locks the other workers' (two parking
      // workers would otherwise lock each other's in opposite orders). Only this thread pushes
      // to w.local, and a waker meanwhile clears `parked`, which the loop below honours.
      lk.unlock();
      work = others_have_local_work(w);
      lk.lock();
    }
    if (work) w.parked = false;
    bool retire = false;
    while (w.parked) {
      if (w.fibers == 0 && w.stacks.used_since_release()) {
        // Idle with caches a burst left behind: trim them after kIdleTrim unless work arrives.
        if (w.cv.wait_for(lk, kIdleTrim) == boost::fibers::cv_status::timeout && w.parked && w.fibers == 0) {
          lk.unlock();  // the caches are this thread's; a waker meanwhile finds `parked` set
          {
            detail::IdleSignalsBlocked quiet;  // no body runs here (idle_signals.hpp)
            if (opts_.on_worker_idle) opts_.on_worker_idle(w.index);
            w.stacks.trim(kIdleStackCache);
            w.stacks.release_memory();
          }
          lk.lock();
        }
      } else if (!w.extra) {
        w.cv.wait(lk);
      } else if (w.cv.wait_for(lk, opts_.retire_after) == boost::fibers::cv_status::timeout && w.parked &&
                 w.fibers == 0 && w.local.empty() && inject_size_.load(std::memory_order_seq_cst) == 0) {
        // An elastic worker idle for retire_after with nothing left on it: it goes. Deciding under
        // w.mu with `parked` still set means no waker has chosen it.
        w.parked = false;
        retire = true;
      }
    }
    idle_.fetch_sub(1, std::memory_order_seq_cst);
    if (retire) break;
  }
  if (opts_.on_worker_stop) opts_.on_worker_stop(w.index);
  tl_scheduler = nullptr;
  tl_worker = nullptr;
  threads_.fetch_sub(1, std::memory_order_relaxed);
  w.status.store(kRetired, std::memory_order_release);  // last: the monitor may now join and reuse it
}

void Scheduler::monitor_main() {
  // The monitor runs no Python and starts no process: it blocks the idle signals for its whole
  // life. (It used to block them only while it waited, and ran its scan every tick unblocked: the
  // kernel could hand it a Ctrl-C meant for a main thread asleep in C, which then slept on — one CI
  // run in session 15, under load.) Elastic workers it starts get worker_mask_ back (grow).
  detail::block_idle_signals_for_good();
  detail::name_this_thread("distaff-monitor");
  const unsigned cap = static_cast<unsigned>(workers_.size());
  int helps = 0;  // ticks in a row on which growth_helps() agreed (one racy sample is not enough)
  UniqueLock lk(monitor_mu_);
  while (!monitor_stop_) {
    // Idle engines tick slowly: the monitor costs nothing measurable when there is no work.
    const auto tick = live_.load(std::memory_order_relaxed) > 0 ? opts_.tick : opts_.tick * 25;
    monitor_cv_.wait_for(lk, tick);
    if (monitor_stop_ || closed_.load(std::memory_order_acquire)) continue;
    lk.unlock();
    unsigned running = 0, stuck = 0;
    const unsigned n = active_.load(std::memory_order_acquire);
    for (unsigned i = 0; i < n; ++i) {
      Worker& w = *workers_[i];
      if (w.status.load(std::memory_order_acquire) != kRunning) continue;
      ++running;
      const std::uint64_t sw = w.switches.load(std::memory_order_relaxed);
      if (sw == w.seen && !w.blocked.load(std::memory_order_relaxed)) {
        if (++w.still >= 2) ++stuck;  // one fiber has held this thread for two ticks or more
      } else {
        w.still = 0;
      }
      w.seen = sw;
    }
    std::size_t queued = 0;
    if (stuck > 0 && running < cap && idle_.load(std::memory_order_seq_cst) == 0) {
      queued = static_cast<std::size_t>(std::max<std::int64_t>(0, inject_size_.load()));
      for (unsigned i = 0; i < n; ++i) {
        if (!workers_[i]->mu.try_lock()) continue;
        std::lock_guard<std::mutex> g(workers_[i]->mu, std::adopt_lock);
        queued += workers_[i]->local.size();
      }
    }
    if (queued > 0 && (!opts_.growth_helps || opts_.growth_helps())) {
      if (++helps >= 2) {
        helps = 0;
        grow(static_cast<unsigned>(std::min<std::size_t>({stuck, queued, cap - running})));
      }
    } else {
      helps = 0;
    }
    lk.lock();
  }
}

void Scheduler::grow(unsigned count) {
  // Monitor thread only.
  for (unsigned k = 0; k < count; ++k) {
    Worker* slot = nullptr;
    const unsigned n = active_.load(std::memory_order_acquire);
    for (unsigned i = opts_.workers; i < n && !slot; ++i) {
      if (workers_[i]->status.load(std::memory_order_acquire) == kRetired) slot = workers_[i].get();
    }
    bool fresh = false;
    if (slot) {
      if (slot->thread.joinable()) slot->thread.join();  // it has finished (status is its last write)
    } else if (n < workers_.size()) {
      slot = workers_[n].get();
      fresh = true;
    } else {
      return;
    }
    slot->extra = true;
    slot->still = 0;
    slot->seen = slot->switches.load(std::memory_order_relaxed);
    slot->status.store(kRunning, std::memory_order_release);
    threads_.fetch_add(1, std::memory_order_relaxed);
    grown_.fetch_add(1, std::memory_order_relaxed);
    // A thread inherits its creator's mask: the elastic worker gets the first workers' (a process
    // its bodies start inherits the worker's mask through exec, and must not start with Ctrl-C
    // blocked), not the monitor's.
    {
      struct MaskScope {  // the monitor's own mask back, also if the thread cannot be started
        sigset_t old;
        explicit MaskScope(const sigset_t& m) noexcept { pthread_sigmask(SIG_SETMASK, &m, &old); }
        ~MaskScope() { pthread_sigmask(SIG_SETMASK, &old, nullptr); }
      } as_first_workers(worker_mask_);
      start_worker(*slot);
    }
    if (fresh) active_.store(n + 1, std::memory_order_release);
  }
}

bool Scheduler::begin_inline(Execution& ex, detail::FiberLocal& saved) {
  DISTAFF_ASSERT(!on_worker());
  DISTAFF_ASSERT(ex.state() == State::pending && ex.owner_ == nullptr);
  // Counted before closed_/draining_ are read, and join() sets closed_ before it reads the count
  // (both seq_cst): either join() sees this run and waits for it, or this sees the close and backs off.
  inline_.fetch_add(1, std::memory_order_seq_cst);
  if (closed_.load(std::memory_order_seq_cst) || draining_.load(std::memory_order_seq_cst)) {
    uncount_inline();
    return false;
  }
  ex.owner_ = this;
  ex.submitted_ns_.store(wall_time_ns(), std::memory_order_relaxed);
  live_.fetch_add(1, std::memory_order_relaxed);
  submitted_.fetch_add(1, std::memory_order_relaxed);
  notify(EventKind::submit, ex);
  const bool started = ex.start();
  DISTAFF_ASSERT(started);  // nobody else knew it: it cannot have been finished meanwhile
  (void)started;
  saved = detail::fiber_local();
  detail::fiber_local() = detail::FiberLocal{&ex, nullptr};
  notify(EventKind::start, ex);
  return true;
}

void Scheduler::end_inline(Execution& ex, const detail::FiberLocal& saved) noexcept {
  notify(EventKind::end, ex);
  detail::fiber_local() = saved;
  uncount_inline();
}

void Scheduler::uncount_inline() noexcept {
  if (inline_.fetch_sub(1, std::memory_order_seq_cst) == 1 && inline_joiners_.load(std::memory_order_seq_cst) != 0) {
    std::lock_guard<std::mutex> g(inline_mu_);
    inline_cv_.notify_all();
  }
}

void Scheduler::on_finished(Execution& ex) noexcept {
  if (live_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard<std::mutex> g(idle_mu_);
    idle_cv_.notify_all();
  }
}

bool Scheduler::wait_idle_until(Clock::time_point deadline) {
  if (live_.load(std::memory_order_acquire) == 0) return true;
  // A body waiting here (shutting down, or waiting for, another engine) is woken by its own cancel
  // or timeout as in every other wait: interrupt() calls the waker, which notifies under idle_mu_,
  // so it cannot slip between the check below and the park.
  Execution* self = interruptible_execution();
  if (self && self->interrupted()) return false;
  WakerScope waker(self, idle_mu_, idle_cv_);
  detail::SuspendScope suspend;
  UniqueLock lk(idle_mu_);
  while (live_.load(std::memory_order_acquire) != 0) {
    if (self && self->interrupted()) return false;
    if (deadline == Clock::time_point::max()) {
      idle_cv_.wait(lk);
    } else if (idle_cv_.wait_until(lk, deadline) == boost::fibers::cv_status::timeout) {
      return live_.load(std::memory_order_acquire) == 0;
    }
  }
  return true;
}

void Scheduler::cancel_bodies() noexcept {
  // draining_ is what a worker checks before start(): set it first, so that whoever sees
  // bodies_cancelled() also finds no further start.
  draining_.store(true, std::memory_order_release);
  bodies_cancelled_.store(true, std::memory_order_release);
}

std::vector<ExecutionRef> Scheduler::close(bool drain) {
  closed_.store(true, std::memory_order_release);
  std::vector<ExecutionRef> out;
  if (!drain) return out;
  draining_.store(true, std::memory_order_release);
  {
    std::lock_guard<std::mutex> g(inject_mu_);
    for (Execution* e : inject_) out.emplace_back(e);
  }
  for (unsigned i = 0, n = active_.load(std::memory_order_acquire); i < n; ++i) {
    Worker* w = workers_[i].get();
    std::lock_guard<std::mutex> g(w->mu);
    for (Execution* e : w->local) out.emplace_back(e);
  }
  {
    std::lock_guard<std::mutex> g(parked_mu_);
    for (Execution* e : parked_) out.emplace_back(e);
  }
  return out;
}

void Scheduler::join(bool switch_hooks) {
  DISTAFF_ASSERT(!on_worker());
  if (on_worker()) throw std::logic_error("Scheduler::join called from one of its own workers");
  closed_.store(true, std::memory_order_release);
  if (joined_.load(std::memory_order_acquire)) return;
  // The hooks run before join_mu_ is taken: a second joiner waits for the first one with the GIL
  // released, since the workers the first one joins may need it to finish.
  std::optional<detail::SuspendScope> suspend;
  if (switch_hooks) suspend.emplace();
  std::lock_guard<std::mutex> joining(join_mu_);
  if (joined_.load(std::memory_order_acquire)) return;
  // Bodies running on callers' threads (begin_inline) use this scheduler until end_inline: wait.
  if (inline_.load(std::memory_order_seq_cst) != 0) {
    inline_joiners_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::unique_lock<std::mutex> lk(inline_mu_);
      inline_cv_.wait(lk, [this] { return inline_.load(std::memory_order_seq_cst) == 0; });
    }
    inline_joiners_.fetch_sub(1, std::memory_order_seq_cst);
  }
  {
    std::lock_guard<std::mutex> g(monitor_mu_);
    monitor_stop_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();  // no worker starts after this
  stopping_.store(true, std::memory_order_release);
  for (auto& w : workers_) {
    // Every notify of w->cv is made under w->mu, which the woken dispatcher re-acquires before its
    // wait returns. Boost.Fiber 1.74 finishes a cross-thread wake-up (schedule_from_remote, then
    // round_robin::notify's broadcast) after releasing its own locks; without w->mu held, the worker
    // could wake, see stopping_, exit and destroy its fiber scheduler while this thread is still
    // inside notify_one (TSan: pthread_cond_broadcast vs ~round_robin's pthread_cond_destroy).
    std::lock_guard<std::mutex> g(w->mu);
    w->parked = false;
    w->cv.notify_one();
  }
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  joined_.store(true, std::memory_order_release);
}

}  // namespace distaff
