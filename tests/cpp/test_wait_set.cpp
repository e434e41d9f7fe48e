// WaitSet: the conditions (all, any, first_exception), completion order, on_ready/on_each, waits
// from plain threads and from fibers, and a wait-set outliving neither its members nor its owner.
//
// Suites:
//   WaitSetThreads  plain std::threads only: safe under TSan (see core_test.hpp).
//   WaitSetFibers   a wait made by an execution on a Scheduler's fiber (interrupt): skipped under TSan.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "core_test.hpp"
#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"
#include "distaff/wait_set.hpp"

namespace distaff::test {
namespace {

class WaitSetThreads : public CoreTest {};

std::vector<ExecutionRef> make_members(std::size_t n) {
  std::vector<ExecutionRef> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(Execution::create("m" + std::to_string(i)));
  return out;
}

void finish_all(const std::vector<ExecutionRef>& members, State s = State::succeeded) {
  for (const ExecutionRef& m : members) m->finish(s);
}

// An already expired deadline: a wait that must not park (the condition is decided now).
Clock::time_point expired() { return Clock::now() - std::chrono::seconds(1); }

TEST_F(WaitSetThreads, AllHoldsOnlyOnceEveryMemberFinished) {
  auto m = make_members(3);
  WaitSet ws(m, WaitCondition::all);
  EXPECT_EQ(ws.size(), 3u);
  EXPECT_FALSE(ws.satisfied());
  m[0]->finish(State::succeeded);
  m[2]->finish(State::failed);
  EXPECT_FALSE(ws.satisfied());
  EXPECT_FALSE(ws.wait_until(expired()));
  EXPECT_EQ(ws.finished_count(), 2u);
  m[1]->finish(State::cancelled);
  EXPECT_TRUE(ws.satisfied());
  EXPECT_TRUE(ws.wait_until(expired()));
  EXPECT_EQ(ws.finished_count(), 3u);
  EXPECT_EQ(ws.first_failed(), 2) << "the member's index, not its place in completion order";
}

TEST_F(WaitSetThreads, FirstFailedIsTheMemberIndexOfTheFirstFailureInCompletionOrder) {
  auto m = make_members(4);
  WaitSet ws(m, WaitCondition::all);
  m[3]->finish(State::succeeded);
  m[2]->finish(State::failed);
  m[0]->finish(State::failed);
  m[1]->finish(State::cancelled);  // a cancellation is not a failure
  EXPECT_EQ(ws.first_failed(), 2);
}

TEST_F(WaitSetThreads, AnyHoldsOnceOneMemberFinished) {
  auto m = make_members(3);
  WaitSet ws(m, WaitCondition::any);
  EXPECT_FALSE(ws.satisfied());
  m[1]->finish(State::cancelled);
  EXPECT_TRUE(ws.satisfied());
  EXPECT_EQ(ws.first_failed(), -1);
  finish_all(m);
}

TEST_F(WaitSetThreads, FirstExceptionHoldsOnAFailureOrOnceAllFinished) {
  auto m = make_members(3);
  {
    WaitSet ws(m, WaitCondition::first_exception);
    m[0]->finish(State::succeeded);
    m[1]->finish(State::cancelled);
    EXPECT_FALSE(ws.satisfied()) << "neither a success nor a cancellation is an exception";
    m[2]->finish(State::failed);
    EXPECT_TRUE(ws.satisfied());
    EXPECT_EQ(ws.first_failed(), 2);
  }
  auto n = make_members(2);
  WaitSet ws(n, WaitCondition::first_exception);
  finish_all(n);
  EXPECT_TRUE(ws.satisfied()) << "all finished without a failure";
  EXPECT_EQ(ws.first_failed(), -1);
}

TEST_F(WaitSetThreads, AnEmptySetHoldsForEveryCondition) {
  for (WaitCondition c : {WaitCondition::all, WaitCondition::any, WaitCondition::first_exception}) {
    WaitSet ws({}, c);
    EXPECT_TRUE(ws.satisfied());
    EXPECT_TRUE(ws.wait_until(expired()));
    EXPECT_EQ(ws.next_completed(expired()), WaitSet::kExhausted);
    bool fired = false;
    ws.on_ready([](void* a) { *static_cast<bool*>(a) = true; }, &fired);
    EXPECT_TRUE(fired) << "on_ready runs at once when the condition already holds";
  }
}

TEST_F(WaitSetThreads, MembersFinishedBeforeConstructionCountAtOnce) {
  auto m = make_members(2);
  m[1]->finish(State::failed);
  WaitSet ws(m, WaitCondition::first_exception);
  EXPECT_TRUE(ws.satisfied());
  EXPECT_EQ(ws.first_failed(), 1);
  EXPECT_EQ(ws.next_completed(expired()), 1);
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kTimedOut);
  m[0]->finish(State::succeeded);
  EXPECT_EQ(ws.next_completed(expired()), 0);
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kExhausted);
}

TEST_F(WaitSetThreads, DuplicateMembersCountOnceEach) {
  auto m = make_members(1);
  WaitSet ws({m[0], m[0]}, WaitCondition::all);
  EXPECT_EQ(ws.size(), 2u);
  m[0]->finish(State::succeeded);
  EXPECT_TRUE(ws.satisfied());
  EXPECT_EQ(ws.finished_count(), 2u);
  std::set<std::int64_t> got{ws.next_completed(expired()), ws.next_completed(expired())};
  EXPECT_EQ(got, (std::set<std::int64_t>{0, 1}));
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kExhausted);
}

TEST_F(WaitSetThreads, NextCompletedReturnsCompletionOrderThenExhausted) {
  auto m = make_members(3);
  WaitSet ws(m, WaitCondition::all);
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kTimedOut);
  m[2]->finish(State::succeeded);
  m[0]->finish(State::failed);
  m[1]->finish(State::cancelled);
  EXPECT_EQ(ws.next_completed(expired()), 2);
  EXPECT_EQ(ws.next_completed(expired()), 0);
  EXPECT_EQ(ws.next_completed(expired()), 1);
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kExhausted);
}

TEST_F(WaitSetThreads, AWaitingThreadIsWokenByTheThreadThatFinishesTheLastMember) {
  auto m = make_members(2);
  WaitSet ws(m, WaitCondition::all);
  Event waiting;
  std::atomic<int> result{-1};
  std::thread waiter([&] {
    waiting.set();
    result = ws.wait_until(safety_deadline()) ? 1 : 0;
  });
  ASSERT_TRUE(waiting.wait());
  std::thread finisher([&] { finish_all(m); });
  finisher.join();
  waiter.join();
  EXPECT_EQ(result.load(), 1);
}

TEST_F(WaitSetThreads, NextCompletedWaitsForTheNextCompletionOnAnotherThread) {
  auto m = make_members(1);
  WaitSet ws(m, WaitCondition::all);
  Event waiting;
  std::atomic<std::int64_t> got{-100};
  std::thread consumer([&] {
    waiting.set();
    got = ws.next_completed(safety_deadline());
  });
  ASSERT_TRUE(waiting.wait());
  m[0]->finish(State::succeeded);
  consumer.join();
  EXPECT_EQ(got.load(), 0);
}

TEST_F(WaitSetThreads, OnReadyFiresOnceOnTheThreadThatSatisfiesTheCondition) {
  auto m = make_members(3);
  WaitSet ws(m, WaitCondition::any);
  struct Probe {
    std::atomic<int> calls{0};
    std::thread::id where;
  } probe;
  ws.on_ready(
      [](void* a) {
        auto* p = static_cast<Probe*>(a);
        p->where = std::this_thread::get_id();
        p->calls.fetch_add(1);
      },
      &probe);
  EXPECT_EQ(probe.calls.load(), 0);
  std::thread::id finisher_id;
  std::thread t([&] {
    finisher_id = std::this_thread::get_id();
    m[1]->finish(State::succeeded);
  });
  t.join();
  finish_all(m);
  EXPECT_EQ(probe.calls.load(), 1);
  EXPECT_EQ(probe.where, finisher_id);
}

struct EachProbe {
  std::atomic<int> each{0};
  std::atomic<int> released{0};
  std::atomic<int> each_after_release{0};
  static void on_each(void* a) {
    auto* p = static_cast<EachProbe*>(a);
    if (p->released.load()) p->each_after_release.fetch_add(1);
    p->each.fetch_add(1);
  }
  static void on_release(void* a) { static_cast<EachProbe*>(a)->released.fetch_add(1); }
};

TEST_F(WaitSetThreads, OnEachRunsAfterEveryLaterCompletionThenReleasesOnce) {
  auto m = make_members(3);
  m[0]->finish(State::succeeded);  // before on_each: not reported
  WaitSet ws(m, WaitCondition::all);
  EachProbe p;
  ws.on_each(&EachProbe::on_each, &p, &EachProbe::on_release);
  m[1]->finish(State::failed);
  EXPECT_EQ(p.each.load(), 1);
  EXPECT_EQ(p.released.load(), 0);
  m[2]->finish(State::succeeded);
  EXPECT_EQ(p.each.load(), 2);
  EXPECT_EQ(p.released.load(), 1);
  EXPECT_EQ(p.each_after_release.load(), 0);
}

TEST_F(WaitSetThreads, OnEachAfterEveryMemberFinishedReleasesAtOnce) {
  auto m = make_members(2);
  finish_all(m);
  WaitSet ws(m, WaitCondition::all);
  EachProbe p;
  ws.on_each(&EachProbe::on_each, &p, &EachProbe::on_release);
  EXPECT_EQ(p.each.load(), 0);
  EXPECT_EQ(p.released.load(), 1);
}

TEST_F(WaitSetThreads, AWaitSetDestroyedWithPendingMembersRemovesItsCallbacksAndReleasesAtOnce) {
  auto m = make_members(2);
  m[0]->finish(State::succeeded);
  EachProbe p;
  {
    WaitSet ws(m, WaitCondition::all);
    ws.on_each(&EachProbe::on_each, &p, &EachProbe::on_release);
    EXPECT_EQ(m[1]->callback_count(), 1u);
  }
  // Given up: nothing stays registered on the member still running, the release ran here.
  EXPECT_EQ(m[1]->callback_count(), 0u);
  EXPECT_EQ(p.released.load(), 1);
  std::thread t([&] { m[1]->finish(State::cancelled); });
  t.join();
  EXPECT_EQ(p.each.load(), 0);
  EXPECT_EQ(p.released.load(), 1);
}

TEST_F(WaitSetThreads, DetachRemovesOnlyItsOwnCallbacksAndReleasesAnUnfiredOnReady) {
  auto m = make_members(3);
  WaitSet keep(m, WaitCondition::all);  // another waiter on the same members
  std::atomic<int> ready_calls{0}, ready_released{0};
  struct Ready {
    std::atomic<int>* calls;
    std::atomic<int>* released;
  } r{&ready_calls, &ready_released};
  {
    WaitSet ws(m, WaitCondition::any);
    ws.on_ready([](void* a) { static_cast<Ready*>(a)->calls->fetch_add(1); }, &r,
                [](void* a) { static_cast<Ready*>(a)->released->fetch_add(1); });
    for (const ExecutionRef& e : m) EXPECT_EQ(e->callback_count(), 2u);
    ws.detach();
    ws.detach();  // idempotent
    for (const ExecutionRef& e : m) EXPECT_EQ(e->callback_count(), 1u);
    EXPECT_EQ(ready_released.load(), 1);
  }
  finish_all(m);
  EXPECT_EQ(ready_calls.load(), 0);
  EXPECT_EQ(ready_released.load(), 1);
  EXPECT_TRUE(keep.satisfied());
}

TEST_F(WaitSetThreads, DetachRacingCompletionsOnOtherThreadsReleasesOnceAndAfterTheLastCall) {
  // A waiter giving up while members finish on other threads: each on_each call finishes before
  // the release, which runs exactly once (TSan/ASan check the accesses).
  for (int round = 0; round < 50; ++round) {
    auto m = make_members(16);
    EachProbe p;
    auto ws = std::make_unique<WaitSet>(m, WaitCondition::all);
    ws->on_each(&EachProbe::on_each, &p, &EachProbe::on_release);
    std::thread a([&] { for (std::size_t i = 0; i < m.size(); i += 2) m[i]->finish(State::succeeded); });
    std::thread b([&] { for (std::size_t i = 1; i < m.size(); i += 2) m[i]->finish(State::succeeded); });
    ws.reset();
    a.join();
    b.join();
    EXPECT_EQ(p.released.load(), 1);
    EXPECT_EQ(p.each_after_release.load(), 0);
    for (const ExecutionRef& e : m) EXPECT_EQ(e->callback_count(), 0u);
  }
}

TEST_F(WaitSetThreads, ConcurrentCompletionsFromManyThreadsAreEachCountedOnce) {
  constexpr std::size_t kMembers = 256;
  constexpr unsigned kThreads = 8;
  auto m = make_members(kMembers);
  WaitSet ws(m, WaitCondition::all);
  EachProbe p;
  ws.on_each(&EachProbe::on_each, &p, &EachProbe::on_release);
  std::atomic<int> ready_calls{0};
  ws.on_ready([](void* a) { static_cast<std::atomic<int>*>(a)->fetch_add(1); }, &ready_calls);
  std::atomic<bool> waited{false};
  std::thread waiter([&] { waited = ws.wait_until(safety_deadline()); });
  std::vector<std::thread> finishers;
  for (unsigned t = 0; t < kThreads; ++t) {
    finishers.emplace_back([&, t] {
      for (std::size_t i = t; i < kMembers; i += kThreads) m[i]->finish(i % 7 == 3 ? State::failed : State::succeeded);
    });
  }
  for (std::thread& t : finishers) t.join();
  waiter.join();
  EXPECT_TRUE(waited.load());
  EXPECT_EQ(ready_calls.load(), 1);
  EXPECT_EQ(p.each.load(), static_cast<int>(kMembers));
  EXPECT_EQ(p.released.load(), 1);
  EXPECT_EQ(ws.finished_count(), kMembers);
  EXPECT_EQ(ws.first_failed() % 7, 3);
  std::set<std::int64_t> seen;
  for (std::size_t i = 0; i < kMembers; ++i) seen.insert(ws.next_completed(expired()));
  EXPECT_EQ(seen.size(), kMembers);
  EXPECT_EQ(*seen.begin(), 0);
  EXPECT_EQ(*seen.rbegin(), static_cast<std::int64_t>(kMembers - 1));
  EXPECT_EQ(ws.next_completed(expired()), WaitSet::kExhausted);
}

// ---- on fibers ------------------------------------------------------------------------------------

class WaitSetFibers : public FiberTest {};

TEST_F(WaitSetFibers, InterruptWakesAFiberParkedOnAWaitSet) {
  auto m = make_members(2);
  Event parking;
  std::atomic<int> waited{-1};
  std::atomic<std::int64_t> next{-100};
  Fn body = [&](Execution& self) {
    WaitSet ws(m, WaitCondition::all);
    parking.set();
    waited = ws.wait_until(safety_deadline()) ? 1 : 0;
    next = ws.next_completed(safety_deadline());  // an interrupted execution does not park again
    self.finish(State::cancelled);
  };
  ExecutionRef a = submit("a", &body);
  ASSERT_TRUE(parking.wait());
  a->interrupt();  // before or after it parks: either way the wait ends, interrupted
  wait_done(a);
  EXPECT_EQ(waited.load(), 0);
  EXPECT_EQ(next.load(), WaitSet::kTimedOut);
  EXPECT_FALSE(m[0]->done());
  shutdown();
  finish_all(m);
}

TEST_F(WaitSetFibers, AFiberParkedOnAWaitSetOfAllItsMembersWaitsOnThemInTheWaitGraph) {
  // all and first_exception: a member waiting on the parked execution closes a cycle; any: no
  // edge (another member can end that wait). The edge goes once the wait returns.
  for (WaitCondition c : {WaitCondition::all, WaitCondition::first_exception, WaitCondition::any}) {
    for (std::size_t n : {1u, 3u}) {
      SCOPED_TRACE(testing::Message() << "condition " << static_cast<int>(c) << ", members " << n);
      auto m = make_members(n);
      for (const ExecutionRef& x : m) ASSERT_TRUE(x->start());
      Event parking, returned, release;
      Fn body = [&](Execution& self) {
        WaitSet ws(m, c);
        parking.set();
        (void)ws.wait_until(safety_deadline());
        returned.set();
        release.wait();
        self.finish(State::succeeded);
      };
      ExecutionRef a = submit("a", &body);
      ASSERT_TRUE(parking.wait());
      ASSERT_TRUE(eventually([&] { return a->parked(); }));
      if (c != WaitCondition::any) {
        ASSERT_TRUE(eventually([&] { return a->blocked_on() != 0; }));
        for (const ExecutionRef& x : m) EXPECT_TRUE(x->would_deadlock(*a));
        EXPECT_THROW(m[0]->set_wait_edge(*a), DeadlockError);
        EXPECT_EQ(m[0]->blocked_on(), 0u) << "a refused edge records nothing";
      } else {
        EXPECT_EQ(a->blocked_on(), 0u);
        EXPECT_FALSE(m[0]->would_deadlock(*a));
      }
      finish_all(m);
      ASSERT_TRUE(returned.wait());
      EXPECT_EQ(a->blocked_on(), 0u) << "the edge goes with the wait";
      ExecutionRef other = Execution::create("other");
      ASSERT_TRUE(other->start());
      other->set_wait_edge(*a);  // nothing leads back from a now
      EXPECT_EQ(other->blocked_on(), a->id());
      other->clear_wait_edge(*a);
      EXPECT_EQ(other->blocked_on(), 0u);
      release.set();
      wait_done(a);
      other->finish(State::succeeded);
    }
  }
}

TEST_F(WaitSetFibers, AParkThatWouldCloseACycleThrowsDeadlockErrorWithoutParking) {
  // The member already waits on the execution that now parks on it (the other order of the test
  // above): the park is refused.
  ExecutionRef m = Execution::create("m");
  ASSERT_TRUE(m->start());
  std::atomic<int> outcome{-1};
  Event ready;
  Fn body = [&](Execution& self) {
    ready.wait();
    WaitSet ws({m, Execution::create("n")}, WaitCondition::all);
    try {
      (void)ws.wait_until(safety_deadline());
      outcome = 0;
    } catch (const DeadlockError&) {
      outcome = 1;
    }
    self.finish(State::succeeded);
  };
  ExecutionRef a = submit("a", &body);
  m->set_wait_edge(*a);
  ready.set();
  wait_done(a);
  EXPECT_EQ(outcome.load(), 1);
  m->clear_wait_edge(*a);
  m->finish(State::succeeded);
}

}  // namespace
}  // namespace distaff::test
