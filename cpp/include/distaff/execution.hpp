#pragma once
// Execution: one submitted call of a task, from submission to its one terminal state.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/fiber/condition_variable.hpp>

#include "distaff/error.hpp"
#include "distaff/thread_annotations.hpp"

namespace distaff {

class Execution;
namespace detail {
struct ForkLocks;  // src/detail/fork_locks.hpp
}  // namespace detail
class Scheduler;
class Timer;
struct ArmedDeadline;

// State: pending → waiting (for dependencies) → running → succeeded | failed | cancelled.
// A running execution whose fiber is suspended in a wait stays `running`; `blocked_on()` says on what.
enum class State : std::uint8_t { pending, waiting, running, succeeded, failed, cancelled };
const char* to_string(State s) noexcept;
inline bool is_terminal(State s) noexcept { return s >= State::succeeded; }

enum class Kind : std::uint8_t { task, workflow };
const char* to_string(Kind k) noexcept;

using Clock = std::chrono::steady_clock;

// Wall-clock time in nanoseconds since the Unix epoch; 0 means "not yet".
std::int64_t wall_time_ns() noexcept;

// ExecutionRef: a strong, intrusive reference. Copying costs one atomic increment.
class ExecutionRef {
 public:
  ExecutionRef() noexcept = default;
  explicit ExecutionRef(Execution* p, bool add_ref = true) noexcept;
  ExecutionRef(const ExecutionRef& o) noexcept;
  ExecutionRef(ExecutionRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ExecutionRef& operator=(ExecutionRef o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~ExecutionRef();
  Execution* get() const noexcept { return p_; }
  Execution* operator->() const noexcept { return p_; }
  Execution& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  // detach: give up ownership without releasing (pairs with ExecutionRef(p, false)).
  Execution* detach() noexcept { return std::exchange(p_, nullptr); }

 private:
  Execution* p_ = nullptr;
};

// Callback: a completion callback of the core. Runs exactly once, on the thread that finished the
// execution (or on the registering thread if it was already finished), after waiters were woken.
// Nested completions triggered from a callback are queued and run iteratively, so a failing chain of
// 1M dependents does not recurse 1M frames deep.
using Callback = void (*)(Execution& ex, void* arg);

// SwitchHooks: called around every suspension of a fiber and every blocking wait of a thread inside
// the core (Execution::wait_until, Scheduler::wait_idle_until). `on_suspend` runs before the caller
// parks and returns a token; `on_resume(token)` runs after it wakes, on the same fiber or thread.
// The Python bindings release the GIL in on_suspend and restore the fiber's interpreter state in
// on_resume. Install once, before any engine starts.
struct SwitchHooks {
  void* (*on_suspend)() = nullptr;
  void (*on_resume)(void* token) = nullptr;
};
void set_switch_hooks(SwitchHooks hooks) noexcept;

enum class WaitStatus : std::uint8_t { done, timeout, interrupted };
WaitStatus sleep_until(Clock::time_point deadline);

class Execution {
 public:
  // create: a new pending execution with a process-unique id (ids start at 1 and increase).
  static ExecutionRef create(std::string name, Kind kind = Kind::task);
  // promise: an execution that runs no body, completed from outside. No scheduler ever starts it:
  // it is created `running` (started_ns set, never submitted) and is finished by whoever settles it,
  // with finish() — the bindings' gather/join results and async bodies. Waits, callbacks, wait-sets,
  // forward_to and the wait graph work on it as on any execution. `parent_id`: 0 for none.
  static ExecutionRef promise(std::string name, Kind kind = Kind::task, std::uint64_t parent_id = 0);

  Execution(const Execution&) = delete;
  Execution& operator=(const Execution&) = delete;

  std::uint64_t id() const noexcept { return id_; }
  const std::string& name() const noexcept { return name_; }
  Kind kind() const noexcept { return kind_; }
  State state() const noexcept { return state_.load(std::memory_order_acquire); }
  bool done() const noexcept { return is_terminal(state()); }

  // Records for description, graph and telemetry. Set before submission, read any time after.
  std::uint64_t parent_id() const noexcept { return parent_id_; }
  void set_parent_id(std::uint64_t id) noexcept { parent_id_ = id; }
  std::vector<std::uint64_t> dependency_ids() const;
  std::span<const std::uint64_t> dependency_id_span() const noexcept;  // the same, without a copy
  std::int64_t submitted_ns() const noexcept { return submitted_ns_.load(std::memory_order_relaxed); }
  std::int64_t started_ns() const noexcept { return started_ns_.load(std::memory_order_relaxed); }
  std::int64_t finished_ns() const noexcept { return finished_ns_.load(std::memory_order_relaxed); }
  // workflow_id: the workflow this execution is tagged with, empty if none. Kept behind a pointer:
  // an untagged execution (the common case) pays 8 bytes, not a string's 32.
  const std::string& workflow_id() const noexcept { return workflow_id_ ? *workflow_id_ : no_workflow_id(); }
  void set_workflow_id(std::string id) {
    workflow_id_ = id.empty() ? nullptr : std::make_unique<const std::string>(std::move(id));
  }
  // owner: the scheduler it was submitted to, or nullptr (not submitted, or a promise).
  Scheduler* owner() const noexcept { return owner_; }

  // payload: an opaque pointer owned by the embedder (the bindings store their Python object here).
  void* payload() const noexcept { return payload_; }
  void set_payload(void* p) noexcept { payload_ = p; }

  // wait_until: waits until this execution is terminal or `deadline` passes.
  // Called from a worker fiber it suspends that fiber only; from any other thread it blocks the thread.
  // The switch hooks run around the park (so the GIL is released while parked).
  // Returns `interrupted` when the *calling* execution was interrupted (see interrupt()).
  // Throws DeadlockError, without waiting, when the caller is a running execution and this execution
  // waits on it, directly or through a chain of waits, forwards or dependencies (including itself).
  WaitStatus wait_until(Clock::time_point deadline);
  WaitStatus wait() { return wait_until(Clock::time_point::max()); }

  // finish: the one terminal transition; returns false (and does nothing) if already terminal.
  // Wakes every waiter, releases the deadline armed on it if any (Timer::arm: its release hook runs
  // here, on this thread), then runs the callbacks. Any thread; never suspends.
  bool finish(State terminal) noexcept DISTAFF_EXCLUDES(mu_);
  // cancel_if_not_started: finish(cancelled) only while still pending or waiting; false otherwise
  // (the execution started or was finished first). Any thread; never suspends.
  bool cancel_if_not_started() noexcept DISTAFF_EXCLUDES(mu_);

  // add_callback: registers `cb` to run once on completion; runs it now, on this thread, if done.
  void add_callback(Callback cb, void* arg) DISTAFF_EXCLUDES(mu_);
  // remove_callback: unregisters one `cb`/`arg` registration not yet run; true if it was removed
  // (it will never run), false if the execution finished first (the callback ran or is about to
  // run on the finishing thread). For a waiter that gives up (a timed-out or cancelled wait-set).
  bool remove_callback(Callback cb, void* arg) noexcept DISTAFF_EXCLUDES(mu_);
  // callback_count: the callbacks registered and not yet run (introspection for tests: a wait that
  // gave up must leave none behind).
  std::size_t callback_count() const noexcept DISTAFF_EXCLUDES(mu_);

  // forward_to: declares that this (running) execution completes when `target` does; used when a
  // body returns another execution. Throws DeadlockError if `target` waits on this execution.
  void forward_to(Execution& target);

  // interrupt: asks the execution to stop waiting. A fiber parked in wait_until on behalf of this
  // execution wakes with `interrupted`; later waits return `interrupted` at once. Any thread.
  void interrupt() noexcept;
  bool interrupted() const noexcept { return interrupt_.load(std::memory_order_acquire); }

  // set_waker: while the calling fiber (this execution's) parks on something other than an
  // execution, interrupt() calls fn(arg) to wake it. Cleared with set_waker(nullptr, nullptr).
  void set_waker(void (*fn)(void*), void* arg) noexcept;

  // would_deadlock: true if this execution waiting on `target` would close a cycle of waits.
  bool would_deadlock(Execution& target) const;
  // deadlock_message: the one wording of a DeadlockError, for `waiter` (this one or another)
  // waiting on `target` ("... waits on itself" when they are the same). The bindings use it too.
  static std::string deadlock_message(const Execution& waiter, const Execution& target);

  // add_child: records `child` (submitted by this execution's body) for cancellation of the tree.
  // Ignored once this execution is finished. Children are released when it finishes.
  void add_child(const ExecutionRef& child) DISTAFF_EXCLUDES(mu_);
  // children: the unfinished children recorded so far.
  std::vector<ExecutionRef> children() const DISTAFF_EXCLUDES(mu_);

  // TreeFinisher: finishes `ex` for terminate_tree — the embedder stores its outcome and calls
  // finish() or cancel_if_not_started() — and interrupts whatever it runs that interrupt() cannot
  // reach: `was_parked` is true when its fiber was parked in a wait, which interrupt() has already
  // woken, false when it may be running code. Returns whether it finished `ex` (false when it
  // declines, or someone else finished it first). Called without distaff locks held; must not throw.
  using TreeFinisher = bool (*)(Execution& ex, bool was_parked, void* arg);
  // terminate_tree: stops this execution and, transitively, its unfinished children (those recorded
  // with add_child; detached work is never recorded), this one first, iteratively (trees can be
  // deep). For each: reads its children and whether it is parked *before* finishing it (finishing
  // releases the child records), interrupt()s it (so a fiber woken by the finish already sees the
  // interrupt), then calls `finisher`. The children of an execution that `finisher` did not finish
  // are left alone. Returns what `finisher` returned for this execution, or false at once if it
  // was already finished. Any thread; never suspends.
  bool terminate_tree(TreeFinisher finisher, void* arg) DISTAFF_EXCLUDES(mu_);

  // parked: the execution's fiber is parked in a wait, a wait-set or a sleep (interrupt() wakes it).
  bool parked() const noexcept;

  // blocked_on: id of the execution this one is parked on, or 0.
  std::uint64_t blocked_on() const noexcept;

  void retain() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept;

  // For the scheduler: add a dependency record before submission.
  void add_dependency(const ExecutionRef& dep);
  // awaits_members: a promise that is settled once every one of `members` has finished (a
  // combining handle: the bindings' gather/join) waits on them. Their unfinished ones join the
  // wait graph as this execution's dependencies until it finishes, so a wait on it from one of
  // them — or from an execution one of them waits on — is a DeadlockError, not a hang. Not for a
  // handle that another member's outcome can settle first (first-completed): that is no cycle.
  void awaits_members(const std::vector<ExecutionRef>& members);
  // set_wait_edge / clear_wait_edge: for waits built on something else than wait_until (a
  // WaitSet's park, an async body's await): until cleared, this execution waits on `target` in the
  // wait graph, so a wait that would close a cycle through it is a DeadlockError, not a hang.
  // set_wait_edge throws DeadlockError, recording nothing, when `target` is this execution or
  // (transitively) waits on it. `target` must outlive the edge. clear_wait_edge removes the edge
  // only while it still leads to `target` (a finish, or a later forward, replaced it otherwise).
  void set_wait_edge(Execution& target);
  void clear_wait_edge(const Execution& target) noexcept;
  // For the scheduler: pending|waiting → running. False if the execution was finished meanwhile.
  bool start() noexcept;

 private:
  friend class Scheduler;
  friend class Timer;
  friend struct ExecutionGraphAccess;
  friend struct detail::ForkLocks;  // src/detail/fork_locks.hpp
  friend WaitStatus sleep_until(Clock::time_point deadline);
  Execution(std::string name, Kind kind);
  // For the scheduler: the unfinished dependencies, visible to cycle checks while `waiting`.
  void link_dependencies(std::vector<ExecutionRef> deps);
  void unlink_dependencies();
  ~Execution();
  struct CallbackNode {
    Callback fn;
    void* arg;
    CallbackNode* next;
  };
  static void run_callbacks(Execution& ex, CallbackNode* list) noexcept;
  bool finish_impl(State terminal, bool only_if_not_started) noexcept DISTAFF_EXCLUDES(mu_);

  std::atomic<int> refs_{1};
  std::atomic<State> state_{State::pending};
  Kind kind_;
  std::atomic<bool> interrupt_{false};
  std::atomic<bool> in_graph_{false};  // deps_ or blocked_on_ was ever set: finish() must unlink
  std::uint64_t id_;
  std::uint64_t parent_id_ = 0;
  std::string name_;
  std::unique_ptr<const std::string> workflow_id_;
  static const std::string& no_workflow_id() noexcept;
  void* payload_ = nullptr;
  Scheduler* owner_ = nullptr;
  std::atomic<std::int64_t> submitted_ns_{0}, started_ns_{0}, finished_ns_{0};
  // What only an execution with dependencies needs, allocated on its first dependency (by
  // add_dependency before the execution is published, or by Scheduler::submit before it turns
  // `waiting`; a CAS installs it, so a racing first use is safe too): most executions have none,
  // and three members inline cost 56 bytes of every record (~20% of it: W1 allocates 100k at
  // once, W5's 10k sleepers keep theirs while parked). Freed with the execution.
  // 48 bytes (a 64-byte chunk) with one dependency id inline: an execution with one dependency
  // (W6's waiters) costs less than when the three members were inline (304 + the id vector's
  // 32-byte buffer, now 256 + 64).
  struct DepsInfo {
    std::atomic<Execution*> failed{nullptr};  // first dependency that did not succeed
    // Guarded by the process-wide wait-graph mutex (g_graph_mu in execution.cpp; a global a
    // header annotation cannot name): unfinished dependencies, kept only while `waiting`.
    std::vector<ExecutionRef> unfinished;
    // Every dependency's id, in order (add_dependency): `one` while cap_ids is 1, else `many`.
    std::uint32_t n_ids = 0;
    std::uint32_t cap_ids = 1;
    union {
      std::uint64_t one;
      std::uint64_t* many;
    } ids{0};
    DepsInfo() = default;
    DepsInfo(const DepsInfo&) = delete;
    DepsInfo& operator=(const DepsInfo&) = delete;
    ~DepsInfo() {
      if (cap_ids > 1) delete[] ids.many;
    }
    void add_id(std::uint64_t id);
    const std::uint64_t* id_data() const noexcept { return cap_ids > 1 ? ids.many : &ids.one; }
  };
  DepsInfo& deps_info();  // creates it on first use (a CAS: safe against a concurrent first use)
  const DepsInfo* deps_info_if_any() const noexcept { return deps_info_.load(std::memory_order_acquire); }
  std::atomic<DepsInfo*> deps_info_{nullptr};
  // Guarded by the process-wide wait-graph mutex (g_graph_mu in execution.cpp):
  Execution* blocked_on_ = nullptr;  // what this execution's fiber waits on (or forwards to)
  void (*waker_fn_)(void*) = nullptr;  // how to wake it when it parks elsewhere (wait-set, sleep)
  void* waker_arg_ = nullptr;

  // mu_ guards the terminal transition (state_ is written under it; read lock-free), the members
  // below and the waits on done_cv_. Lock order: mu_ before a Timer's mutex (Timer::arm); mu_ is
  // never held while calling out (callbacks, hooks, the finisher of terminate_tree).
  mutable std::mutex mu_;
  std::vector<ExecutionRef> children_ DISTAFF_GUARDED_BY(mu_);
  boost::fibers::condition_variable_any done_cv_;  // waiters: fibers and threads alike
  CallbackNode* callbacks_ DISTAFF_GUARDED_BY(mu_) = nullptr;
  // The armed deadline (Timer::arm), or nullptr; always nullptr once terminal (finish takes it in
  // the same critical section as the transition). Taken out by whoever ends it (timer.hpp).
  ArmedDeadline* deadline_ DISTAFF_GUARDED_BY(mu_) = nullptr;
  std::atomic<std::uint32_t> deps_left_{0};        // for the scheduler's dependency counting
  // Fibers and threads inside a wait on done_cv_ (each counts itself under mu_ around the wait).
  // finish() and interrupt() notify only when there is one: Boost's notify_all is compiled into
  // libboost_fiber with its own spinlock, whose 5 KiB frame touched a second page of the stack of
  // every fiber that finished an execution nobody waited on (boost_spinlock_ttas.hpp).
  std::uint32_t cv_waiters_ DISTAFF_GUARDED_BY(mu_) = 0;
};

inline ExecutionRef::ExecutionRef(Execution* p, bool add_ref) noexcept : p_(p) {
  if (p_ && add_ref) p_->retain();
}
inline ExecutionRef::ExecutionRef(const ExecutionRef& o) noexcept : p_(o.p_) {
  if (p_) p_->retain();
}
inline ExecutionRef::~ExecutionRef() {
  if (p_) p_->release();
}

// current_execution: the execution whose body runs on the calling fiber, or nullptr on a plain
// thread (and on a worker's dispatcher). Follows the fiber across its suspensions.
Execution* current_execution() noexcept;

// interruptible_execution: the execution whose cancel or timeout ends a wait started here now —
// current_execution(), unless it has already finished without being interrupted (a cancelled or
// timed-out execution finishes at once; its body's later waits still end at once, interrupted).
// A finished execution's fiber still runs
// code: the done-callbacks run by its completion (and a body's own cancel() of itself runs them
// before the body unwinds). Nothing can cancel or time out a finished execution any more, so such
// a callback's waits end only by their own timeout or target, as the code that registered it would
// see them (docs/concepts.md). Take it once, when a wait starts.
Execution* interruptible_execution() noexcept;

// WakerScope: for its lifetime, interrupt() of `self` (none when null) wakes a fiber or thread
// parked on `cv`, a condition variable that is not an execution's (an engine's idleness, a join):
// the waker notifies under `mu`, the mutex of the waiter's check, so the notify cannot slip between
// that check of self->interrupted() and the park.
template <class Mutex, class CondVar>
class WakerScope {
 public:
  WakerScope(Execution* self, Mutex& mu, CondVar& cv) noexcept : self_(self), mu_(mu), cv_(cv) {
    if (self_) self_->set_waker(&wake, this);
  }
  ~WakerScope() {
    if (self_) self_->set_waker(nullptr, nullptr);
  }
  WakerScope(const WakerScope&) = delete;
  WakerScope& operator=(const WakerScope&) = delete;

 private:
  static void wake(void* arg) {
    auto* w = static_cast<WakerScope*>(arg);
    std::lock_guard<Mutex> g(w->mu_);
    w->cv_.notify_all();
  }
  Execution* self_;
  Mutex& mu_;
  CondVar& cv_;
};

// sleep_until: suspends the calling fiber until `deadline` (its worker runs other fibers meanwhile);
// on a plain thread, blocks the thread. Switch hooks run around the park. Returns `interrupted` early
// if the calling execution is interrupted.
WaitStatus sleep_until(Clock::time_point deadline);

// live_executions: executions created and not yet destroyed, process-wide (leak checks in tests).
std::int64_t live_executions() noexcept;

namespace detail {
// The fiber-local slots the core keeps on the OS thread and saves/restores around each suspension.
struct FiberLocal {
  Execution* current = nullptr;
  void* trampoline = nullptr;
};
FiberLocal& fiber_local() noexcept;
// SuspendScope: saves fiber-local slots and calls the switch hooks around one park. On a fiber
// running an execution it also reports suspend (waiting on `on`, if an execution) and resume to
// the execution's scheduler's observer.
class SuspendScope {
 public:
  explicit SuspendScope(const Execution* on = nullptr) noexcept;
  ~SuspendScope();
  SuspendScope(const SuspendScope&) = delete;
  SuspendScope& operator=(const SuspendScope&) = delete;

 private:
  FiberLocal saved_;
  void* token_;
};
}  // namespace detail

}  // namespace distaff
