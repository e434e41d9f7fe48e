#pragma once
// Shared helpers for the core's GoogleTest suite (no Python anywhere).
//
// Sanitizer convention (TSan): Boost 1.74's Boost.Context does not tell ThreadSanitizer about stack
// switches, so TSan cannot follow fibers. Tests that only use plain std::threads (Execution state,
// callbacks, the wait graph, the stack pool's counters) live in test suites whose name ENDS in
// "Threads" (ExecutionThreads, StackPoolThreads). Under TSan (`__SANITIZE_THREAD__`, i.e.
// -DDISTAFF_TSAN=ON) CoreTest::SetUp skips every other test, so `ctest` in a TSan build runs exactly
// those suites and reports the rest as skipped. The same set, explicitly: --gtest_filter='*Threads.*'
// (or `ctest -R 'Threads\.'`). A test *name* containing "Threads" does not count.
// (Plain threads still switch stacks once per blocking wait — main context to Boost's dispatcher
// and back — but entirely inside uninstrumented libboost_fiber, on one thread; TSan copes with that.)

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"

#if defined(__SANITIZE_THREAD__)
#define DISTAFF_TEST_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DISTAFF_TEST_UNDER_TSAN 1
#endif
#endif
#ifndef DISTAFF_TEST_UNDER_TSAN
#define DISTAFF_TEST_UNDER_TSAN 0
#endif

namespace distaff::test {

// kSlowBuild: an unoptimised or sanitizer build, where timing-dependent bounds are looser.
#if defined(__SANITIZE_ADDRESS__) || !defined(__OPTIMIZE__) || DISTAFF_TEST_UNDER_TSAN
inline constexpr bool kSlowBuild = true;
#else
inline constexpr bool kSlowBuild = false;
#endif

// kSafety: a generous safety net for waits that should end long before it. Never used for ordering.
inline constexpr std::chrono::seconds kSafety{60};

inline Clock::time_point safety_deadline() { return Clock::now() + kSafety; }

// Event: a one-shot, thread-blocking flag (test-side ordering between plain threads, or to
// deliberately block a worker's OS thread). wait() returns false only if the safety net expired.
class Event {
 public:
  void set() {
    {
      std::lock_guard<std::mutex> g(mu_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool is_set() const {
    std::lock_guard<std::mutex> g(mu_);
    return set_;
  }
  bool wait(std::chrono::steady_clock::duration timeout = kSafety) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return set_; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// eventually: polls `pred` (yielding) until it holds or the safety net expires. For observing a
// state another thread is known to be heading to (e.g. "this fiber is parked on X"), not for
// ordering by elapsed time.
inline bool eventually(const std::function<bool()>& pred, std::chrono::steady_clock::duration timeout = kSafety) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// run_on_small_stack: runs `fn` on a thread with a 512 KiB stack, so that anything recursing once
// per link of a 100k-long completion chain overflows for certain (and crashes the test) instead of
// happening to fit in the main thread's 8 MiB.
inline void run_on_small_stack(std::function<void()> fn) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 512 * 1024), 0);
  pthread_t th;
  auto tramp = [](void* p) -> void* {
    (*static_cast<std::function<void()>*>(p))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&th, &attr, tramp, &fn), 0);
  ASSERT_EQ(pthread_join(th, nullptr), 0);
  pthread_attr_destroy(&attr);
}

// CountingHooks: installs switch hooks that count suspensions and resumptions and check that each
// on_resume gets back its own token on the thread that suspended, with the fiber-local slots already
// restored (current_execution() is the one that suspended). Uninstalls on destruction.
// Install before starting the threads/fibers that wait; destroy after they are joined.
class CountingHooks {
 public:
  struct Token {
    std::thread::id thread;
    Execution* current;
  };
  static inline std::atomic<std::int64_t> suspends{0};
  static inline std::atomic<std::int64_t> resumes{0};
  static inline std::atomic<std::int64_t> mismatches{0};  // wrong thread or wrong current execution
  // Suspensions on the calling thread: what a fiber reads around a call that must not park, free
  // of the other workers' parks (`suspends` counts every thread's, and changes under it at any time).
  static inline thread_local std::int64_t suspends_on_this_thread = 0;
  // Optional probe, called at the end of on_suspend (e.g. to count who is about to park).
  static inline std::atomic<void (*)(Execution*)> on_suspend_probe{nullptr};

  CountingHooks() {
    suspends = 0;
    resumes = 0;
    mismatches = 0;
    set_switch_hooks(SwitchHooks{&suspend, &resume});
  }
  ~CountingHooks() {
    set_switch_hooks(SwitchHooks{});
    on_suspend_probe = nullptr;
  }
  CountingHooks(const CountingHooks&) = delete;
  CountingHooks& operator=(const CountingHooks&) = delete;

 private:
  static void* suspend() {
    suspends.fetch_add(1);
    ++suspends_on_this_thread;
    auto* t = new Token{std::this_thread::get_id(), current_execution()};
    if (auto probe = on_suspend_probe.load()) probe(t->current);
    return t;
  }
  static void resume(void* token) {
    auto* t = static_cast<Token*>(token);
    if (t == nullptr || t->thread != std::this_thread::get_id() || t->current != current_execution()) {
      mismatches.fetch_add(1);
    }
    delete t;
    resumes.fetch_add(1);
  }
};

// CoreTest: the base fixture. Applies the TSan convention above and checks at teardown that every
// execution created by the test was destroyed (live_executions() back to its baseline).
class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
#if DISTAFF_TEST_UNDER_TSAN
    const std::string suite = ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name();
    const std::string tag = "Threads";
    if (suite.size() < tag.size() || suite.compare(suite.size() - tag.size(), tag.size(), tag) != 0) {
      GTEST_SKIP() << "uses Boost.Fiber stack switching, which TSan cannot follow on Boost 1.74";
    }
#endif
    baseline_ = live_executions();
  }
  void TearDown() override {
    if (IsSkipped()) return;
    EXPECT_EQ(live_executions(), baseline_) << "executions leaked (or destroyed twice) by this test";
  }

  std::int64_t baseline_ = 0;
};

// FiberTest: CoreTest plus a Scheduler (workers() workers, 256 KiB stacks) whose run hook calls the
// execution's payload, a Fn* owned by the test body (none: the execution just succeeds). Bodies
// capture test-body locals, so every test calls shutdown() before its locals go out of scope;
// teardown checks that nothing is left live or on a fiber.
class FiberTest : public CoreTest {
 protected:
  using Fn = std::function<void(Execution&)>;
  virtual unsigned workers() const { return 2; }

  void SetUp() override {
    CoreTest::SetUp();
    if (IsSkipped()) return;
    SchedulerOptions o;
    o.workers = workers();
    o.stack_size = 256 * 1024;
    // Each execution's payload is the test's body for it (a Fn owned by the test body).
    o.run = [](Execution& ex) {
      if (ex.done()) return;
      if (auto* fn = static_cast<Fn*>(ex.payload())) {
        (*fn)(ex);
      } else {
        ex.finish(State::succeeded);
      }
    };
    sched_ = std::make_unique<Scheduler>(std::move(o));
  }
  void TearDown() override {
    if (sched_) {
      shutdown();
      const SchedulerStats st = sched_->stats();
      EXPECT_EQ(st.live, 0);
      EXPECT_EQ(st.fibers, 0);
      sched_.reset();
    }
    CoreTest::TearDown();
  }
  // shutdown: joins the workers. Bodies capture test-body locals, so every test calls this before
  // its locals go out of scope.
  void shutdown() {
    if (joined_) return;
    joined_ = true;
    sched_->close(false);
    sched_->join();
  }
  ExecutionRef submit(const char* name, Fn* body, const std::vector<ExecutionRef>& deps = {}) {
    ExecutionRef ex = Execution::create(name);
    ex->set_payload(body);
    sched_->submit(ex, deps);
    return ex;
  }
  // wait_done: waits from the test's thread (a plain thread) with the safety net.
  static void wait_done(const ExecutionRef& ex) {
    ASSERT_EQ(ex->wait_until(safety_deadline()), WaitStatus::done) << ex->name() << " never finished";
  }

  std::unique_ptr<Scheduler> sched_;
  bool joined_ = false;
};

}  // namespace distaff::test
