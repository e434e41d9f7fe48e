// Timer: the one thread that fires timeouts, and the per-execution deadlines on it (Timer::arm).
// Plain threads only, so both suites run under TSan too.

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core_test.hpp"
#include "distaff/timer.hpp"

namespace distaff::test {
namespace {

class TimerThreads : public CoreTest {};

struct Fired {
  std::mutex mu;
  std::vector<int> order;
  Event done;
  std::size_t expect = 0;
  static void record(void* arg);
};

struct Item {
  Fired* log;
  int value;
};

void Fired::record(void* arg) {
  auto* item = static_cast<Item*>(arg);
  std::lock_guard<std::mutex> g(item->log->mu);
  item->log->order.push_back(item->value);
  if (item->log->order.size() == item->log->expect) item->log->done.set();
}

// Every test declares what the callbacks touch before the Timer: the Timer is destroyed first and
// joins its thread, which may still be inside Event::set() when the waiting test thread wakes.
TEST_F(TimerThreads, FiresInDeadlineOrderNotScheduleOrder) {
  Fired log;
  Timer t;
  log.expect = 3;
  const auto now = Clock::now();
  Item a{&log, 3}, b{&log, 1}, c{&log, 2};
  t.schedule(now + std::chrono::milliseconds(30), &Fired::record, &a);
  t.schedule(now + std::chrono::milliseconds(10), &Fired::record, &b);
  t.schedule(now + std::chrono::milliseconds(20), &Fired::record, &c);
  ASSERT_TRUE(log.done.wait());
  EXPECT_EQ(log.order, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(t.pending(), 0u);
}

TEST_F(TimerThreads, CancelledEntryNeverFiresAndStopReturnsWhatDidNot) {
  Fired log;
  log.expect = 1;
  Item gone{&log, 1}, fires{&log, 2}, never{&log, 3};
  Timer t;
  // Far off, so the cancel wins for certain (5 ms lost the race on a loaded machine under TSan).
  const auto id = t.schedule(Clock::now() + std::chrono::hours(1), &Fired::record, &gone);
  EXPECT_TRUE(t.cancel(id));
  EXPECT_FALSE(t.cancel(id));
  t.schedule(Clock::now() + std::chrono::milliseconds(10), &Fired::record, &fires);
  ASSERT_TRUE(log.done.wait());
  t.schedule(Clock::now() + std::chrono::hours(1), &Fired::record, &never);
  std::vector<void*> dropped = t.stop();
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0], &never);
  EXPECT_EQ(log.order, (std::vector<int>{2}));
  EXPECT_THROW(t.schedule(Clock::now(), &Fired::record, &never), ShutdownError);
}

// Regression (ASan heap-use-after-free): the timer thread waits until the earliest entry's deadline;
// cancelling exactly that entry freed the deadline the wait was still reading. The thread is made
// to wait on `far` (the earliest left once `now` fired), then `far` is cancelled and an earlier entry
// wakes the thread. Repeated, since the cancel can land before the thread starts that wait.
TEST_F(TimerThreads, CancellingTheEntryTheThreadWaitsForIsSafe) {
  constexpr int kRounds = 50;
  std::deque<Fired> logs;  // 2 per round, alive until the Timer has joined its thread
  std::deque<Item> items;
  Timer t;
  for (int round = 0; round < kRounds; ++round) {
    Fired& first = logs.emplace_back();
    Fired& second = logs.emplace_back();
    first.expect = second.expect = 1;
    Item& now_item = items.emplace_back(Item{&first, 0});
    Item& far_item = items.emplace_back(Item{&second, -1});
    Item& wake_item = items.emplace_back(Item{&second, 1});
    const auto far = t.schedule(Clock::now() + std::chrono::hours(1), &Fired::record, &far_item);
    t.schedule(Clock::now(), &Fired::record, &now_item);
    ASSERT_TRUE(first.done.wait());  // the thread fired `now` and goes back to wait for `far`
    std::this_thread::yield();
    ASSERT_TRUE(t.cancel(far));
    t.schedule(Clock::now() + std::chrono::milliseconds(1), &Fired::record, &wake_item);
    ASSERT_TRUE(second.done.wait());
    EXPECT_EQ(second.order, (std::vector<int>{1}));
  }
}

// The thread is woken only for an entry due before the deadline it sleeps until (wake_at_); one due
// later is found when it wakes then, even if the entry it slept for was cancelled meanwhile.
TEST_F(TimerThreads, AnEntryDueAfterTheThreadsWaitFiresWhenTheEntryItWaitedForWasCancelled) {
  Fired log;
  log.expect = 1;
  Item never{&log, -1}, later{&log, 1};
  Timer t;
  const auto now = Clock::now();
  const auto first = t.schedule(now + std::chrono::milliseconds(30), &Fired::record, &never);
  t.schedule(now + std::chrono::milliseconds(60), &Fired::record, &later);  // no wake-up needed
  ASSERT_TRUE(t.cancel(first));
  ASSERT_TRUE(log.done.wait());
  EXPECT_EQ(log.order, (std::vector<int>{1}));
}

// A stream of schedule-then-cancel (the bindings' swallowed-interrupt watch: one per cancelled body,
// dropped as the body ends) leaves the timer working: the next entry fires, and nothing else does.
TEST_F(TimerThreads, AStreamOfScheduledAndCancelledEntriesLeavesTheNextOneOnTime) {
  Fired log;
  log.expect = 1;
  std::deque<Item> items;
  Item last{&log, 1};
  Timer t;
  for (int i = 0; i < 10000; ++i) {
    Item& it = items.emplace_back(Item{&log, -1});
    // Far off, so every cancel wins for certain (a loaded machine may pause this thread for ms).
    const auto id = t.schedule(Clock::now() + std::chrono::hours(1), &Fired::record, &it);
    ASSERT_TRUE(t.cancel(id));
  }
  t.schedule(Clock::now() + std::chrono::milliseconds(1), &Fired::record, &last);
  ASSERT_TRUE(log.done.wait());
  EXPECT_EQ(log.order, (std::vector<int>{1}));
  EXPECT_EQ(t.pending(), 0u);
}


// ---- deadlines ------------------------------------------------------------------------------------

class DeadlineThreads : public CoreTest {};

// Which test thread is running (0: none of the test's own). Release hooks record it, to check that
// release runs on the thread that finished, disarmed, re-armed or stopped.
thread_local int tl_tag = 0;

// Probe: the arg of one armed deadline; counts its hook calls.
struct Probe {
  std::atomic<int> fired{0};
  std::atomic<int> released{0};
  std::atomic<int> released_on{-1};
  std::atomic<bool> fired_unfinished{false};  // ex was not terminal as fire started
  std::atomic<bool> fire_finished{false};     // fire's own finish(failed) won
  int calls() const { return fired.load() + released.load(); }
};

void probe_fire(Execution& ex, void* arg) {
  auto* p = static_cast<Probe*>(arg);
  p->fired_unfinished.store(!ex.done());
  // Like the bindings' hook: end the execution as timed out, unless someone else was first.
  p->fire_finished.store(ex.finish(State::failed));
  p->fired.fetch_add(1);
}

void probe_release(Execution&, void* arg) {
  auto* p = static_cast<Probe*>(arg);
  p->released_on.store(tl_tag);
  p->released.fetch_add(1);
}

constexpr DeadlineHooks kProbeHooks{&probe_fire, &probe_release};

TEST_F(DeadlineThreads, FiresOnceWhileUnfinishedAndTheHookFinishesIt) {
  Probe p;
  ExecutionRef ex = Execution::create("slow");
  Timer t;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::milliseconds(5), kProbeHooks, &p));
  ASSERT_TRUE(eventually([&] { return p.calls() == 1; }));
  EXPECT_EQ(p.fired.load(), 1);
  EXPECT_EQ(p.released.load(), 0);
  EXPECT_TRUE(p.fired_unfinished.load());
  EXPECT_TRUE(p.fire_finished.load());
  EXPECT_EQ(ex->state(), State::failed);
  EXPECT_FALSE(Timer::disarm(*ex));  // fire owned it
  ASSERT_TRUE(eventually([&] { return t.pending() == 0; }));
  t.stop();
  EXPECT_EQ(p.calls(), 1);
}

TEST_F(DeadlineThreads, FinishingFirstReleasesOnTheFinishingThreadAndDropsTheEntry) {
  Probe p;
  ExecutionRef ex = Execution::create("quick");
  Timer t;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::hours(1), kProbeHooks, &p));
  EXPECT_EQ(t.pending(), 1u);
  tl_tag = 7;
  ASSERT_TRUE(ex->finish(State::succeeded));
  tl_tag = 0;
  EXPECT_EQ(p.released.load(), 1);  // inside finish(), before it returned
  EXPECT_EQ(p.released_on.load(), 7);
  EXPECT_EQ(t.pending(), 0u);  // the entry (and its reference) went at once, not at the deadline
  EXPECT_FALSE(Timer::disarm(*ex));
  // Finished: arming again does nothing and leaves the arg to the caller.
  Probe q;
  EXPECT_FALSE(t.arm(*ex, Clock::now(), kProbeHooks, &q));
  EXPECT_EQ(t.pending(), 0u);
  t.stop();
  EXPECT_EQ(p.calls(), 1);
  EXPECT_EQ(q.calls(), 0);
}

TEST_F(DeadlineThreads, ReArmingReleasesTheFormerDeadlineHereAndTheNewOneFires) {
  Probe first, second;
  ExecutionRef ex = Execution::create("rearmed");
  Timer t;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::hours(1), kProbeHooks, &first));
  tl_tag = 3;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::milliseconds(2), kProbeHooks, &second));
  tl_tag = 0;
  EXPECT_EQ(first.released.load(), 1);
  EXPECT_EQ(first.released_on.load(), 3);
  ASSERT_TRUE(eventually([&] { return second.calls() == 1; }));
  EXPECT_EQ(second.fired.load(), 1);
  EXPECT_EQ(first.fired.load(), 0);
  EXPECT_EQ(ex->state(), State::failed);
  t.stop();
}

TEST_F(DeadlineThreads, DisarmReleasesHereAndTheDeadlineNeverFires) {
  Probe p;
  ExecutionRef ex = Execution::create("disarmed");
  Timer t;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::hours(1), kProbeHooks, &p));
  tl_tag = 5;
  EXPECT_TRUE(Timer::disarm(*ex));
  tl_tag = 0;
  EXPECT_FALSE(Timer::disarm(*ex));
  EXPECT_EQ(p.released.load(), 1);
  EXPECT_EQ(p.released_on.load(), 5);
  EXPECT_EQ(t.pending(), 0u);
  ASSERT_TRUE(ex->finish(State::succeeded));  // nothing armed: nothing called
  t.stop();
  EXPECT_EQ(p.calls(), 1);
}

// A fire hook may arm the execution again (a retry with a fresh timeout): no lock is held there.
TEST_F(DeadlineThreads, AFireHookMayArmAgain) {
  struct Rearm {
    Timer* timer;
    Probe next;
    std::atomic<int> fired{0};
  };
  static constexpr DeadlineHooks kRearmHooks{
      [](Execution& ex, void* arg) {
        auto* r = static_cast<Rearm*>(arg);
        EXPECT_TRUE(r->timer->arm(ex, Clock::now() + std::chrono::milliseconds(1), kProbeHooks, &r->next));
        r->fired.fetch_add(1);
      },
      [](Execution&, void*) { ADD_FAILURE() << "released, expected to fire"; }};
  Rearm r;
  ExecutionRef ex = Execution::create("retried");
  Timer t;
  r.timer = &t;
  ASSERT_TRUE(t.arm(*ex, Clock::now() + std::chrono::milliseconds(1), kRearmHooks, &r));
  ASSERT_TRUE(eventually([&] { return r.next.calls() == 1; }));
  EXPECT_EQ(r.fired.load(), 1);
  EXPECT_EQ(r.next.fired.load(), 1);
  EXPECT_EQ(ex->state(), State::failed);
  t.stop();
}

// The race the bindings live with: executions finishing (succeeded or cancelled) on several threads
// right as their deadlines pass. For each, exactly one hook runs once; a release means a finish
// other than the hook's won, and it ran on that finishing thread; after a fire exactly one of the
// hook and the test thread finished it. Every entry and reference is gone afterwards (CoreTest checks live executions).
TEST_F(DeadlineThreads, ManyExecutionsFinishingRightAtTheirDeadlineEachGetExactlyOneHook) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = kSlowBuild ? 500 : 2000;
  constexpr int kRounds = 3;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<Probe>> probes;
    std::vector<ExecutionRef> exs;
    std::vector<int> finished_by(kThreads * kPerThread, -1);
    Timer t;
    const auto at = Clock::now() + std::chrono::milliseconds(20);
    for (int i = 0; i < kThreads * kPerThread; ++i) {
      probes.push_back(std::make_unique<Probe>());
      exs.push_back(Execution::create("racing"));
      // Spread over ~2 ms either side of `at`, so the timer fires all through the finishing.
      const auto d = at + std::chrono::microseconds((i * 37) % 4000 - 2000);
      ASSERT_TRUE(t.arm(*exs.back(), d, kProbeHooks, probes.back().get()));
    }
    std::vector<std::thread> threads;
    for (int k = 0; k < kThreads; ++k) {
      threads.emplace_back([&, k] {
        tl_tag = k + 1;
        // Start finishing as the first deadlines pass (a race, not an ordering: any start works).
        while (Clock::now() < at - std::chrono::milliseconds(2)) std::this_thread::yield();
        for (int i = k; i < kThreads * kPerThread; i += kThreads) {
          const State s = (i & 1) ? State::succeeded : State::cancelled;
          if (exs[i]->finish(s)) finished_by[i] = k + 1;
        }
        tl_tag = 0;
      });
    }
    for (auto& th : threads) th.join();
    // Every execution is finished: each deadline was released, or claimed (a hook may still run).
    for (const auto& p : probes) ASSERT_TRUE(eventually([&] { return p->calls() >= 1; }));
    ASSERT_TRUE(eventually([&] { return t.pending() == 0; }));
    int fired = 0, released = 0;
    for (int i = 0; i < kThreads * kPerThread; ++i) {
      const Probe& p = *probes[i];
      ASSERT_EQ(p.calls(), 1) << "execution " << i;
      if (p.released.load() == 1) {
        ++released;
        EXPECT_NE(finished_by[i], -1) << "released although the fire hook's finish won";
        EXPECT_EQ(p.released_on.load(), finished_by[i]) << "released on another thread than the finishing one";
      } else {
        ++fired;
        // Claimed while unfinished; a test thread's finish may still land before the hook's own
        // (the hook then sees done(), as the bindings' does): exactly one of the two finished it.
        EXPECT_EQ(p.fire_finished.load(), finished_by[i] == -1);
      }
    }
    EXPECT_EQ(fired + released, kThreads * kPerThread);
    t.stop();
    for (const auto& p : probes) EXPECT_EQ(p->calls(), 1);
  }
}

// disarm() and re-arm() on other threads against the timer firing: exactly once per armed deadline.
TEST_F(DeadlineThreads, DisarmAndReArmRacingTheFireCallEachDeadlineOnce) {
  constexpr int kN = kSlowBuild ? 1000 : 4000;
  std::vector<std::unique_ptr<Probe>> first, second;
  std::vector<ExecutionRef> exs;
  Timer t;
  const auto at = Clock::now() + std::chrono::milliseconds(10);
  for (int i = 0; i < kN; ++i) {
    first.push_back(std::make_unique<Probe>());
    second.push_back(std::make_unique<Probe>());
    exs.push_back(Execution::create("contested"));
    ASSERT_TRUE(t.arm(*exs.back(), at + std::chrono::microseconds(i % 2000), kProbeHooks, first.back().get()));
  }
  std::atomic<int> disarmed{0};
  std::vector<char> rearmed(kN, 0);
  std::thread disarmer([&] {
    tl_tag = 1;
    while (Clock::now() < at) std::this_thread::yield();
    for (int i = 0; i < kN; i += 2) disarmed += Timer::disarm(*exs[i]);
  });
  std::thread rearmer([&] {
    tl_tag = 2;
    while (Clock::now() < at) std::this_thread::yield();
    for (int i = 1; i < kN; i += 2) {
      rearmed[i] = t.arm(*exs[i], Clock::now() + std::chrono::microseconds(100), kProbeHooks, second[i].get());
    }
  });
  disarmer.join();
  rearmer.join();
  // Every re-armed deadline ends by firing (nothing finishes those executions otherwise).
  for (int i = 1; i < kN; i += 2) {
    if (rearmed[i]) {
      ASSERT_TRUE(eventually([&] { return second[i]->calls() == 1; }));
    }
  }
  int released_by_disarm = 0;
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(first[i]->calls(), 1) << "execution " << i;
    if (i % 2 == 0) {
      if (first[i]->released.load()) {
        ++released_by_disarm;
        EXPECT_EQ(first[i]->released_on.load(), 1);
        EXPECT_FALSE(exs[i]->done());
      } else {
        EXPECT_EQ(exs[i]->state(), State::failed);
      }
      EXPECT_EQ(second[i]->calls(), 0);
    } else if (rearmed[i]) {
      if (first[i]->released.load()) {
        // The re-arm replaced a deadline that had not fired: released by that thread; the new one
        // fires, as nothing else finishes the execution.
        EXPECT_EQ(first[i]->released_on.load(), 2);
        EXPECT_EQ(second[i]->fired.load(), 1);
      } else {
        // The first was claimed and its hook had not finished the execution yet when the re-arm
        // came: the new deadline was then released by that finish (or fired first and won).
        EXPECT_EQ(first[i]->fired.load(), 1);
      }
    } else {
      EXPECT_EQ(first[i]->fired.load(), 1);  // it fired and finished first: arm() declined
      EXPECT_EQ(second[i]->calls(), 0);
    }
  }
  EXPECT_EQ(released_by_disarm, disarmed.load());
  for (auto& ex : exs) ex->finish(State::cancelled);  // the disarmed ones are still unfinished
  ASSERT_TRUE(eventually([&] { return t.pending() == 0; }));
  t.stop();
}

// stop() with deadlines pending: they are released on the stopping thread (never fired); later
// arms throw; finishing those executions afterwards calls nothing more.
TEST_F(DeadlineThreads, StopReleasesPendingDeadlinesOnTheStoppingThread) {
  constexpr int kN = 100;
  std::vector<std::unique_ptr<Probe>> probes;
  std::vector<ExecutionRef> exs;
  Probe late;
  Timer t;
  for (int i = 0; i < kN; ++i) {
    probes.push_back(std::make_unique<Probe>());
    exs.push_back(Execution::create("pending"));
    ASSERT_TRUE(t.arm(*exs.back(), Clock::now() + std::chrono::hours(1), kProbeHooks, probes.back().get()));
  }
  tl_tag = 9;
  EXPECT_TRUE(t.stop().empty());  // no schedule()d callbacks: deadlines are released, not returned
  tl_tag = 0;
  EXPECT_EQ(t.pending(), 0u);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(probes[i]->released.load(), 1);
    EXPECT_EQ(probes[i]->released_on.load(), 9);
    EXPECT_FALSE(exs[i]->done());
  }
  EXPECT_THROW(t.arm(*exs[0], Clock::now(), kProbeHooks, &late), ShutdownError);
  for (auto& ex : exs) ASSERT_TRUE(ex->finish(State::succeeded));
  for (const auto& p : probes) EXPECT_EQ(p->calls(), 1);
  EXPECT_EQ(late.calls(), 0);
}

// stop() racing finishing threads and firing deadlines: still exactly one hook per deadline.
TEST_F(DeadlineThreads, StopRacingFinishAndFireCallsEachDeadlineOnce) {
  constexpr int kN = kSlowBuild ? 1000 : 4000;
  std::vector<std::unique_ptr<Probe>> probes;
  std::vector<ExecutionRef> exs;
  Timer t;
  const auto at = Clock::now() + std::chrono::milliseconds(10);
  for (int i = 0; i < kN; ++i) {
    probes.push_back(std::make_unique<Probe>());
    exs.push_back(Execution::create("stopped"));
    ASSERT_TRUE(t.arm(*exs.back(), at + std::chrono::microseconds(i % 3000), kProbeHooks, probes.back().get()));
  }
  std::thread finisher([&] {
    tl_tag = 1;
    while (Clock::now() < at) std::this_thread::yield();
    for (int i = 0; i < kN; i += 2) exs[i]->finish(State::succeeded);
  });
  std::thread stopper([&] {
    tl_tag = 2;
    while (Clock::now() < at + std::chrono::microseconds(1000)) std::this_thread::yield();
    t.stop();
  });
  finisher.join();
  stopper.join();
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(probes[i]->calls(), 1) << "execution " << i;
    if (probes[i]->released.load()) {
      EXPECT_NE(probes[i]->released_on.load(), 0);
    }
  }
  EXPECT_EQ(t.pending(), 0u);
  for (auto& ex : exs) ex->finish(State::cancelled);
  for (const auto& p : probes) EXPECT_EQ(p->calls(), 1);
}

}  // namespace
}  // namespace distaff::test
