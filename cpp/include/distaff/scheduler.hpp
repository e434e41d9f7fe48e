#pragma once
// Scheduler: worker threads, each running its own Boost.Fiber scheduler, that turn submitted
// executions into fibers.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include <signal.h>

#include <boost/fiber/condition_variable.hpp>

#include "distaff/execution.hpp"
#include "distaff/observer.hpp"
#include "distaff/thread_annotations.hpp"

namespace distaff {

namespace detail {
class StackPool;
struct FiberMain;
}

// Bounds of SchedulerOptions::stack_size.
inline constexpr std::size_t kStackSizeMin = std::size_t(64) << 10;
inline constexpr std::size_t kStackSizeMax = std::size_t(1) << 30;
// fiber_scratch: kFiberScratchBytes (16-aligned) that belong to the running worker fiber, at the
// top of its stack slot above its C stack, in the page that stack already touches first; nullptr
// on any other thread or context (the worker's main or dispatcher context). The bytes live as long
// as the fiber and are the embedder's (the bindings keep the fiber's CPython data-stack root chunk
// there); their content is undefined when the fiber starts. src/detail/stack_allocator.hpp.
inline constexpr std::size_t kFiberScratchBytes = 1024;
void* fiber_scratch() noexcept;
// keep_only_current_fiber: for a process forked by a body. In the child, the calling worker fiber
// is the only one of its thread that may run again: the worker's loop (it would take the parent's
// queued work) and the parent's other fibers of this thread (copies, whose embedder state the fork
// discarded) are never resumed; the fiber's own waits still park and wake as before, the thread
// blocking while nothing else is ready. Returns false (and changes nothing) off a worker fiber.
bool keep_only_current_fiber() noexcept;
// How many fiber stacks get a static guard page, process-wide (default 20,000); stacks beyond it
// get a guard armed only while their fiber runs (src/detail/stack_allocator.hpp). For tests.
void set_stack_guard_limit(std::size_t limit) noexcept;
std::size_t stack_guard_limit() noexcept;

struct SchedulerOptions {
  // workers: OS threads. 1 is the measured best default for GIL-bound bodies
  // (docs/internals/scheduler.md, "Worker count").
  unsigned workers = 1;
  // max_workers: elastic growth (Go's hand-off). When every worker is stuck in one fiber — no fiber
  // switch and no idle wait for two ticks, i.e. a body in a blocking call — while work is queued and
  // `growth_helps` agrees, a monitor thread starts more workers, up to max_workers in all. Extra
  // workers retire after `retire_after` idle. 0 or <= workers: fixed size, no monitor thread.
  unsigned max_workers = 0;
  std::chrono::milliseconds tick{2};
  std::chrono::milliseconds retire_after{2000};
  // growth_helps: sampled by the monitor each tick while some worker is stuck (the bindings answer
  // "the GIL is free now": a worker stuck holding the GIL, or waiting for it, would not be helped
  // by another thread). Unset: always.
  std::function<bool()> growth_helps;
  // stack_size: usable size of each fiber stack, like a thread's (only touched pages cost memory;
  // docs/limits.md). Between 64 KiB and 1 GiB, else the constructor throws std::invalid_argument.
  std::size_t stack_size = std::size_t(8) << 20;
  // run: runs the body of `ex` on a worker fiber. Must not throw. Called for every dequeued
  // execution: with state `running` normally, terminal if it was finished while queued, and
  // `pending` if the scheduler is draining (close(true)) or its bodies were cancelled
  // (cancel_bodies()): then run must cancel it. (A dependent turns `pending` as its dependencies
  // end, so run never sees `waiting`.) It should finish `ex`, or arrange for something
  // else to finish it (a forward). A run that waits for something before it starts the body (the
  // bindings wait for the GIL) checks bodies_cancelled() once it has it. Required.
  std::function<void(Execution& ex)> run;
  // start_failed: no fiber could be created for the dequeued `ex` (its stack could not be mapped:
  // memory or vm.max_map_count exhausted). Must finish `ex` (failed) and release what run() would
  // have; the scheduler then drops the queue's reference. Called on the worker thread, outside any
  // fiber. Unset: `ex` is finished as failed.
  std::function<void(Execution& ex)> start_failed;
  // abandon: `ex` will never run, because `failed` (a dependency) did not succeed; must finish `ex`.
  // Called on the thread that finished the dependency, from inside Execution::finish. Required when
  // executions are submitted with dependencies.
  std::function<void(Execution& ex, Execution& failed)> abandon;
  // Worker lifecycle hooks, called on the worker's own thread, outside any fiber body.
  std::function<void(unsigned index)> on_worker_start;
  std::function<void(unsigned index)> on_worker_stop;
  // on_worker_idle: the worker has had no fibers and no work for a second after running some
  // (trim caches here). Called on the worker thread, outside any fiber.
  std::function<void(unsigned index)> on_worker_idle;
  // on_worker_block: the worker's OS thread is about to block because no fiber is ready (called
  // from the fiber algorithm's suspend_until). Release anything other threads may need — the
  // bindings release the GIL here, which they otherwise keep across fiber switches on a busy worker.
  std::function<void()> on_worker_block;
  // before_park (testing seam): the worker found no work and is about to announce itself idle and
  // re-check the queues. Called on the worker thread, outside any fiber, holding no lock. Lets a test
  // run another worker's step inside that window; leave unset otherwise.
  std::function<void(unsigned index)> before_park;
};

struct SchedulerStats {
  std::int64_t live = 0;         // submitted and not yet finished
  std::int64_t queued = 0;       // ready, not yet started
  std::int64_t fibers = 0;       // started fibers not yet ended (running or suspended)
  std::int64_t threads = 0;      // worker threads running now (workers plus elastic extras)
  std::int64_t grown = 0;        // elastic workers started so far
  std::int64_t submitted = 0;    // total ever submitted
  std::int64_t finished = 0;     // total ever finished: counted as the state turns terminal, before
                                 // its callbacks run (`live` drops after them), so an observer that
                                 // saw an execution done() also sees it counted here
};

class Scheduler {
 public:
  // Starts the worker threads at once.
  explicit Scheduler(SchedulerOptions options);
  // Warning: joins the workers (shutdown(false) then join()); do not destroy a scheduler from one
  // of its own fibers.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // submit: queues `ex` (pending) to run once every execution in `deps` is done; with no deps it is
  // ready at once (dependency *records* for the graph are added by the caller with
  // Execution::add_dependency; `deps` are the ones that gate the start). If a dependency fails or is cancelled, options.abandon(ex, dep) is called instead.
  // From a worker fiber the execution is queued on that worker (children stay with their parent)
  // unless another worker is idle. Any thread; never blocks. Throws ShutdownError after close().
  void submit(const ExecutionRef& ex, const std::vector<ExecutionRef>& deps = {});

  // ---- a body run on the calling thread (a synchronous call; docs/internals/sync-calls.md) -------
  // begin_inline: admits `ex` (pending, never submitted, no dependencies) as submit() does and starts
  // it at once on the calling thread, which must not be a worker of this scheduler: it counts as
  // live (wait_idle_until waits for it) and as an inline run (join() waits for it to end), the
  // observer sees its submit and start events, and current_execution() is `ex` on this thread until
  // end_inline(), which gets back what it was in `saved`. Returns false, having changed nothing,
  // once close() or cancel_bodies() was called: the caller submits it instead (refused, or queued
  // and cancelled, as any other). The caller holds a reference to `ex` until end_inline().
  bool begin_inline(Execution& ex, detail::FiberLocal& saved);
  // end_inline: the body has returned and `ex` is finished (or following another execution): the
  // end event, current_execution() restored, the inline run uncounted. Same thread as begin_inline.
  void end_inline(Execution& ex, const detail::FiberLocal& saved) noexcept;
  // inline_runs: bodies running on callers' threads now (begin_inline without end_inline).
  int inline_runs() const noexcept { return inline_.load(std::memory_order_acquire); }

  // wait_idle_until: waits until every submitted execution is finished, or `deadline`.
  // Suspends a fiber or blocks a thread (switch hooks around the park). Returns true when idle;
  // false at the deadline, or at once when the calling fiber's execution is interrupted (cancelled
  // or timed out: its interrupted() is then true), as every other wait of a body.
  bool wait_idle_until(Clock::time_point deadline);

  // close: stops accepting submissions. With `drain`, no further dequeued execution is started
  // (run() sees it still pending and must cancel it), and the executions that have not started —
  // queued, or waiting for dependencies — are returned (they stay in their queues; the caller
  // finishes them, normally as cancelled). An execution a worker started just before the call is
  // not in the list: it runs, and a later cancel finds it running. One whose dependencies end while
  // the caller handles the list (or during the call) may be missing from it, or be dequeued first:
  // run() then gets it `pending` and cancels it. Any thread.
  std::vector<ExecutionRef> close(bool drain);

  // cancel_bodies: from now on no body of this scheduler starts. A dequeued execution is not
  // started (run() sees it `pending`, as when draining), and bodies_cancelled() turns true, so that a
  // run() that was handed an execution started just before — and still waits for something before
  // running its body — cancels it instead. The embedder cancels the bodies running now itself (the
  // core cannot interrupt a body). Any thread; idempotent; never blocks.
  void cancel_bodies() noexcept;
  bool bodies_cancelled() const noexcept { return bodies_cancelled_.load(std::memory_order_acquire); }
  // draining: close(true) or cancel_bodies() was called: no dequeued execution starts any more. A
  // run() that waits for something before the body starts (the bindings wait for the GIL) and then
  // finds draining() true was handed its execution before the drain: it cancels it too.
  bool draining() const noexcept { return draining_.load(std::memory_order_acquire); }

  // join: after close(), waits for every started fiber and inline run to end and joins the worker threads.
  // Blocks the calling thread; with `switch_hooks`, the switch hooks run around the wait (the
  // bindings release the GIL there), without them the caller must hold nothing the workers need
  // (a thread that is no Python thread). Idempotent and safe to call from several threads at once:
  // the first joins, the others wait until it is done. Must not be called from a worker.
  void join(bool switch_hooks = true) DISTAFF_EXCLUDES(join_mu_);
  bool joined() const noexcept { return joined_.load(std::memory_order_acquire); }

  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  // workers: the configured (base) number of workers; stats().threads counts elastic ones too.
  unsigned workers() const noexcept { return opts_.workers; }
  SchedulerStats stats() const;

  // on_worker: true if the calling thread is one of this scheduler's workers.
  bool on_worker() const noexcept;
  // worker_index: the calling thread's index among this scheduler's workers, or -1.
  int worker_index() const noexcept;
  // capacity: how many worker indices may ever occur (workers plus elastic ones).
  unsigned capacity() const noexcept { return static_cast<unsigned>(workers_.size()); }

  // set_observer: installs `obs` (nullptr removes it) and returns the previous one, after every
  // call into the previous one has returned: the caller may destroy it. Events happen only while
  // an observer is installed. Any thread, except from inside Observer::on_event.
  std::shared_ptr<Observer> set_observer(std::shared_ptr<Observer> obs) DISTAFF_EXCLUDES(observer_mu_);
  bool observed() const noexcept { return observer_.load(std::memory_order_acquire) != nullptr; }
  // notify: reports `kind` for `ex` to the observer, if one is installed (one load otherwise).
  void notify(EventKind kind, Execution& ex, std::uint64_t blocked_on = 0) noexcept {
    if (observer_.load(std::memory_order_acquire) != nullptr) notify_slow(kind, ex, blocked_on);
  }

 private:
  friend class Execution;
  friend struct detail::FiberMain;
  struct Worker;
  void worker_main(Worker& w);
  void run_fiber(Worker& w, Execution* ex);  // the body of every worker fiber (detail::FiberMain)
  void start_worker(Worker& w);
  void monitor_main();
  void grow(unsigned n);
  void enqueue_ready(Execution* ex);  // takes over one reference
  Execution* take_work(Worker& w, std::vector<Execution*>& buf);
  void wake_one_idle();
  bool others_have_local_work(Worker& w);
  void on_finished(Execution& ex) noexcept;
  void uncount_inline() noexcept;
  static void on_dependency_done(Execution& dep, void* arg);
  void notify_slow(EventKind kind, Execution& ex, std::uint64_t blocked_on) noexcept;

  SchedulerOptions opts_;
  // Every slot a worker may ever use is allocated up front (max_workers), so other threads can
  // iterate the first `active_` slots without a lock while the monitor starts more.
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> active_{0};     // slots in use (running or retired)
  std::atomic<std::int64_t> threads_{0};
  std::atomic<std::int64_t> grown_{0};
  std::thread monitor_;
  // The signal mask of the thread that created the scheduler, which the first workers inherit; the
  // monitor (which blocks the idle signals for good) starts elastic workers with it too.
  sigset_t worker_mask_;
  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool monitor_stop_ DISTAFF_GUARDED_BY(monitor_mu_) = false;

  std::mutex inject_mu_;
  std::deque<Execution*> inject_ DISTAFF_GUARDED_BY(inject_mu_);  // ready executions from non-worker threads
  std::atomic<std::int64_t> inject_size_{0};
  std::atomic<int> idle_{0};

  std::mutex parked_mu_;
  std::unordered_set<Execution*> parked_ DISTAFF_GUARDED_BY(parked_mu_);  // waiting for dependencies (for close(drain))

  std::mutex join_mu_;                 // serialises join(): one thread joins, later ones wait
  std::atomic<bool> joined_{false};
  std::atomic<bool> closed_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};  // close(true), cancel_bodies(): dequeued executions are not started
  std::atomic<bool> bodies_cancelled_{false};  // cancel_bodies()
  std::atomic<std::int64_t> live_{0};
  std::atomic<std::int64_t> submitted_{0};
  std::atomic<std::int64_t> finished_{0};  // Execution::finish_impl, as the state turns terminal
  std::atomic<std::int64_t> fibers_{0};
  std::mutex idle_mu_;
  boost::fibers::condition_variable_any idle_cv_;
  // Inline runs (begin_inline .. end_inline): join() waits for them under inline_mu_.
  std::atomic<int> inline_{0};
  std::atomic<int> inline_joiners_{0};
  std::mutex inline_mu_;
  std::condition_variable inline_cv_;

  // The observer: a raw pointer read on every notification point, the owning pointer beside it.
  // Each worker counts its calls inside notify_slow (Worker::observing), observer_users_ those of
  // other threads, so set_observer can wait them out (a notifier increments, then re-reads the
  // pointer; set_observer swaps, then waits for zero: seq_cst both).
  std::atomic<Observer*> observer_{nullptr};
  alignas(64) std::atomic<int> observer_users_{0};
  std::mutex observer_mu_;                       // serialises set_observer
  std::shared_ptr<Observer> observer_owner_ DISTAFF_GUARDED_BY(observer_mu_);
};

}  // namespace distaff
