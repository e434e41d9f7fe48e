// Execution: the state machine, callbacks, waits, the wait graph and the switch hooks.
//
// Suites:
//   ExecutionThreads  plain std::threads only: safe under TSan (see core_test.hpp).
//   ExecutionFibers   waits made by executions running on a Scheduler's fibers (deadlocks,
//                     interrupts, hooks around fiber parks): skipped under TSan.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "core_test.hpp"
#include "distaff/error.hpp"
#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"

namespace distaff::test {
namespace {

using namespace std::chrono_literals;
using Duration = Clock::duration;

class ExecutionThreads : public CoreTest {};

// ---- states and records ----------------------------------------------------------------------

TEST_F(ExecutionThreads, NewExecutionIsPendingWithIncreasingIds) {
  ExecutionRef a = Execution::create("a");
  ExecutionRef b = Execution::create("b", Kind::workflow);
  EXPECT_GT(a->id(), 0u);
  EXPECT_GT(b->id(), a->id());
  EXPECT_EQ(a->name(), "a");
  EXPECT_EQ(a->kind(), Kind::task);
  EXPECT_EQ(b->kind(), Kind::workflow);
  EXPECT_EQ(a->state(), State::pending);
  EXPECT_FALSE(a->done());
  EXPECT_FALSE(a->interrupted());
  EXPECT_EQ(a->blocked_on(), 0u);
  EXPECT_EQ(a->parent_id(), 0u);
  EXPECT_EQ(a->submitted_ns(), 0);
  EXPECT_EQ(a->started_ns(), 0);
  EXPECT_EQ(a->finished_ns(), 0);
  EXPECT_EQ(a->payload(), nullptr);
  EXPECT_EQ(live_executions(), baseline_ + 2);

  int token = 0;
  a->set_payload(&token);
  a->set_parent_id(b->id());
  a->add_dependency(b);
  EXPECT_EQ(a->payload(), &token);
  EXPECT_EQ(a->parent_id(), b->id());
  EXPECT_EQ(a->dependency_ids(), std::vector<std::uint64_t>{b->id()});
  // Recording a dependency does not gate anything: `a` stays pending, `b` untouched.
  EXPECT_EQ(a->state(), State::pending);
  EXPECT_EQ(b->state(), State::pending);
}

TEST_F(ExecutionThreads, ToStringNamesEveryValue) {
  EXPECT_STREQ(to_string(State::pending), "pending");
  EXPECT_STREQ(to_string(State::waiting), "waiting");
  EXPECT_STREQ(to_string(State::running), "running");
  EXPECT_STREQ(to_string(State::succeeded), "succeeded");
  EXPECT_STREQ(to_string(State::failed), "failed");
  EXPECT_STREQ(to_string(State::cancelled), "cancelled");
  EXPECT_STREQ(to_string(Kind::task), "task");
  EXPECT_STREQ(to_string(Kind::workflow), "workflow");
  for (State s : {State::pending, State::waiting, State::running}) EXPECT_FALSE(is_terminal(s));
  for (State s : {State::succeeded, State::failed, State::cancelled}) EXPECT_TRUE(is_terminal(s));
  EXPECT_GT(wall_time_ns(), 0);
}

TEST_F(ExecutionThreads, StartThenFinishIsTheOneTerminalTransition) {
  for (State terminal : {State::succeeded, State::failed, State::cancelled}) {
    ExecutionRef ex = Execution::create("t");
    ASSERT_TRUE(ex->start());
    EXPECT_EQ(ex->state(), State::running);
    EXPECT_GT(ex->started_ns(), 0);
    EXPECT_TRUE(ex->start()) << "start() on a running execution keeps it running";
    EXPECT_EQ(ex->state(), State::running);

    EXPECT_TRUE(ex->finish(terminal));
    EXPECT_EQ(ex->state(), terminal);
    EXPECT_TRUE(ex->done());
    EXPECT_GE(ex->finished_ns(), ex->started_ns());
    const std::int64_t finished = ex->finished_ns();

    // Every later transition is refused and changes nothing.
    for (State again : {State::succeeded, State::failed, State::cancelled}) {
      EXPECT_FALSE(ex->finish(again));
    }
    EXPECT_FALSE(ex->cancel_if_not_started());
    EXPECT_FALSE(ex->start());
    EXPECT_EQ(ex->state(), terminal);
    EXPECT_EQ(ex->finished_ns(), finished);
  }
}

TEST_F(ExecutionThreads, CancelIfNotStartedOnlyBeforeStart) {
  ExecutionRef pending = Execution::create("pending");
  EXPECT_TRUE(pending->cancel_if_not_started());
  EXPECT_EQ(pending->state(), State::cancelled);
  EXPECT_FALSE(pending->start());

  ExecutionRef running = Execution::create("running");
  ASSERT_TRUE(running->start());
  EXPECT_FALSE(running->cancel_if_not_started());
  EXPECT_EQ(running->state(), State::running);
  EXPECT_TRUE(running->finish(State::cancelled));  // finish() may cancel a running execution
}

TEST_F(ExecutionThreads, ConcurrentFinishFromManyThreadsExactlyOneWins) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    ExecutionRef ex = Execution::create("race");
    std::atomic<int> callback_runs{0};
    ex->add_callback([](Execution&, void* arg) { static_cast<std::atomic<int>*>(arg)->fetch_add(1); },
                     &callback_runs);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::atomic<int> winners{0};
    std::atomic<int> winner_index{-1};
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i] {
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        const State s = static_cast<State>(static_cast<int>(State::succeeded) + i % 3);
        if (ex->finish(s)) {
          winners.fetch_add(1);
          winner_index = i;
        }
      });
    }
    while (ready.load() < kThreads) std::this_thread::yield();
    go = true;
    for (auto& t : threads) t.join();
    ASSERT_EQ(winners.load(), 1) << "round " << round;
    EXPECT_EQ(callback_runs.load(), 1) << "round " << round;
    EXPECT_EQ(ex->state(), static_cast<State>(static_cast<int>(State::succeeded) + winner_index.load() % 3));
  }
}

TEST_F(ExecutionThreads, StartRacingCancelIfNotStartedExactlyOneWins) {
  // The scheduler's start() moves pending → running without the execution's mutex while another
  // thread may cancel it: exactly one of them must win, and the loser must change nothing.
  constexpr int kRounds = 500;
  for (int round = 0; round < kRounds; ++round) {
    ExecutionRef ex = Execution::create("race");
    std::atomic<bool> go{false};
    bool started = false, cancelled = false;
    std::thread starter([&] {
      while (!go.load()) std::this_thread::yield();
      started = ex->start();
    });
    std::thread canceller([&] {
      while (!go.load()) std::this_thread::yield();
      cancelled = ex->cancel_if_not_started();
    });
    go = true;
    starter.join();
    canceller.join();
    ASSERT_NE(started, cancelled) << "round " << round;
    EXPECT_EQ(ex->state(), started ? State::running : State::cancelled);
    if (started) ex->finish(State::succeeded);  // either side may win a round; never both, never neither
  }
}

// ---- callbacks -------------------------------------------------------------------------------

struct CallbackLog {
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
  std::vector<State> states_seen;
};

struct CallbackArg {
  CallbackLog* log;
  int index;
};

void log_callback(Execution& ex, void* arg) {
  auto* a = static_cast<CallbackArg*>(arg);
  std::lock_guard<std::mutex> g(a->log->mu);
  a->log->order.push_back(a->index);
  a->log->threads.push_back(std::this_thread::get_id());
  a->log->states_seen.push_back(ex.state());
}

TEST_F(ExecutionThreads, CallbacksRunOnceInRegistrationOrderOnTheFinishingThread) {
  ExecutionRef ex = Execution::create("cb");
  CallbackLog log;
  std::vector<CallbackArg> args;
  for (int i = 0; i < 12; ++i) args.push_back({&log, i});
  for (int i = 0; i < 10; ++i) ex->add_callback(&log_callback, &args[i]);
  EXPECT_TRUE(log.order.empty()) << "callbacks must not run before finish";

  std::thread::id finisher;
  std::thread t([&] {
    finisher = std::this_thread::get_id();
    EXPECT_TRUE(ex->finish(State::failed));
  });
  t.join();
  std::vector<int> expected(10);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(log.order, expected);
  for (auto id : log.threads) EXPECT_EQ(id, finisher);
  for (State s : log.states_seen) EXPECT_EQ(s, State::failed);

  // After finish: each new callback runs at once, on the registering thread, exactly once.
  ex->add_callback(&log_callback, &args[10]);
  ex->add_callback(&log_callback, &args[11]);
  expected.push_back(10);
  expected.push_back(11);
  EXPECT_EQ(log.order, expected);
  EXPECT_EQ(log.threads[10], std::this_thread::get_id());
  EXPECT_EQ(log.threads[11], std::this_thread::get_id());

  // A second finish does not run anything again.
  EXPECT_FALSE(ex->finish(State::succeeded));
  EXPECT_EQ(log.order, expected);
}

TEST_F(ExecutionThreads, UnfinishedExecutionWithCallbacksIsDestroyedCleanly) {
  std::atomic<int> runs{0};
  {
    ExecutionRef ex = Execution::create("never finished");
    for (int i = 0; i < 3; ++i) {
      ex->add_callback([](Execution&, void* a) { static_cast<std::atomic<int>*>(a)->fetch_add(1); }, &runs);
    }
  }
  EXPECT_EQ(runs.load(), 0);  // the nodes are freed (ASan/LSan would flag a leak), never run
}

TEST_F(ExecutionThreads, CallbacksRacingFinishEachRunExactlyOnce) {
  constexpr int kAdders = 4;
  constexpr int kPerAdder = 2000;
  ExecutionRef ex = Execution::create("cb race");
  std::vector<std::atomic<int>> runs(kAdders * kPerAdder);
  std::atomic<int> ran_before_terminal{0};
  struct Arg {
    std::atomic<int>* counter;
    std::atomic<int>* bad;
  };
  std::vector<Arg> args;
  args.reserve(runs.size());
  for (auto& r : runs) args.push_back({&r, &ran_before_terminal});

  std::atomic<bool> go{false};
  std::atomic<int> registered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kAdders; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kPerAdder; ++i) {
        registered.fetch_add(1);
        ex->add_callback(
            [](Execution& e, void* a) {
              auto* arg = static_cast<Arg*>(a);
              if (!e.done()) arg->bad->fetch_add(1);
              arg->counter->fetch_add(1);
            },
            &args[static_cast<std::size_t>(t * kPerAdder + i)]);
      }
    });
  }
  threads.emplace_back([&] {
    while (!go.load()) std::this_thread::yield();
    // Finish in the middle of the registrations: some callbacks are queued, some run at once.
    EXPECT_TRUE(eventually([&] { return registered.load() >= kAdders * kPerAdder / 2; }));
    EXPECT_TRUE(ex->finish(State::succeeded));
  });
  go = true;
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < runs.size(); ++i) ASSERT_EQ(runs[i].load(), 1) << "callback " << i;
  EXPECT_EQ(ran_before_terminal.load(), 0);
}

// Callbacks that finish further executions: the chain must be trampolined, not recursed.
struct Chain {
  std::vector<ExecutionRef> links;
  std::vector<std::size_t> order;
};

void finish_next_link(Execution& ex, void* arg) {
  auto* chain = static_cast<Chain*>(arg);
  const auto i = reinterpret_cast<std::uintptr_t>(ex.payload());
  chain->order.push_back(i);
  if (i + 1 < chain->links.size()) {
    EXPECT_TRUE(chain->links[i + 1]->finish(State::failed));
    // Trampolined: the next link's callbacks have not run yet (they run after this one returns).
    EXPECT_EQ(chain->order.back(), i);
  }
}

TEST_F(ExecutionThreads, LongFailingChainOfCallbacksDoesNotOverflowTheStack) {
  constexpr std::size_t kLinks = 100'000;
  Chain chain;
  chain.links.reserve(kLinks);
  chain.order.reserve(kLinks);
  for (std::size_t i = 0; i < kLinks; ++i) {
    ExecutionRef ex = Execution::create("link");
    ex->set_payload(reinterpret_cast<void*>(static_cast<std::uintptr_t>(i)));
    ex->add_callback(&finish_next_link, &chain);
    chain.links.push_back(std::move(ex));
  }
  run_on_small_stack([&] { EXPECT_TRUE(chain.links[0]->finish(State::failed)); });
  ASSERT_EQ(chain.order.size(), kLinks);
  for (std::size_t i = 0; i < kLinks; ++i) {
    ASSERT_EQ(chain.order[i], i) << "callbacks ran out of order";
    ASSERT_EQ(chain.links[i]->state(), State::failed);
  }
}

TEST_F(ExecutionThreads, NestedCompletionsRunBreadthFirstAndExactlyOnce) {
  // A binary tree of 2^16-1 executions; each node's callback finishes its two children.
  constexpr std::size_t kNodes = (1u << 16) - 1;
  struct Tree {
    std::vector<ExecutionRef> nodes;
    std::vector<int> runs;
  } tree;
  tree.runs.assign(kNodes, 0);
  for (std::size_t i = 0; i < kNodes; ++i) {
    ExecutionRef ex = Execution::create("node");
    ex->set_payload(reinterpret_cast<void*>(static_cast<std::uintptr_t>(i)));
    ex->add_callback(
        [](Execution& e, void* arg) {
          auto* t = static_cast<Tree*>(arg);
          const auto i2 = reinterpret_cast<std::uintptr_t>(e.payload());
          ++t->runs[i2];
          for (std::size_t c = 2 * i2 + 1; c <= 2 * i2 + 2 && c < t->nodes.size(); ++c) {
            t->nodes[c]->finish(State::cancelled);
          }
        },
        &tree);
    tree.nodes.push_back(std::move(ex));
  }
  run_on_small_stack([&] { tree.nodes[0]->finish(State::cancelled); });
  for (std::size_t i = 0; i < kNodes; ++i) {
    ASSERT_EQ(tree.runs[i], 1) << "node " << i;
    ASSERT_EQ(tree.nodes[i]->state(), State::cancelled);
  }
}

// ---- references --------------------------------------------------------------------------------

TEST_F(ExecutionThreads, ReferencesKeepTheExecutionAlive) {
  ExecutionRef a = Execution::create("ref");
  Execution* raw = a.get();
  {
    ExecutionRef copy = a;
    ExecutionRef moved = std::move(copy);
    EXPECT_FALSE(copy);
    EXPECT_EQ(moved.get(), raw);
    a = ExecutionRef();  // drop the original: `moved` keeps it alive
    EXPECT_EQ(live_executions(), baseline_ + 1);
    EXPECT_EQ(moved->name(), "ref");
    Execution* detached = moved.detach();
    EXPECT_FALSE(moved);
    ExecutionRef adopt(detached, /*add_ref=*/false);
    EXPECT_EQ(live_executions(), baseline_ + 1);
  }
  EXPECT_EQ(live_executions(), baseline_);
}

// ---- waits from plain threads --------------------------------------------------------------------

TEST_F(ExecutionThreads, WaitUntilTimesOutAndLeavesTheExecutionPending) {
  ExecutionRef ex = Execution::create("slow");
  const auto deadline = Clock::now() + 20ms;
  EXPECT_EQ(ex->wait_until(deadline), WaitStatus::timeout);
  EXPECT_GE(Clock::now(), deadline) << "timed out before the deadline";
  EXPECT_EQ(ex->wait_until(Clock::now() - 1s), WaitStatus::timeout) << "a past deadline";
  EXPECT_EQ(ex->state(), State::pending);
  ex->finish(State::succeeded);
  EXPECT_EQ(ex->wait_until(Clock::now() - 1s), WaitStatus::done);
  EXPECT_EQ(ex->wait(), WaitStatus::done);
}

std::atomic<int> g_plain_parks{0};
void count_plain_park(Execution* current) {
  if (current == nullptr) g_plain_parks.fetch_add(1);
}

TEST_F(ExecutionThreads, WaitersOnPlainThreadsAreWokenByAnotherThread) {
  constexpr int kWaiters = 8;
  CountingHooks hooks;
  g_plain_parks = 0;
  CountingHooks::on_suspend_probe = &count_plain_park;

  ExecutionRef ex = Execution::create("awaited");
  std::vector<WaitStatus> statuses(kWaiters, WaitStatus::timeout);
  std::vector<State> seen(kWaiters, State::pending);
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      // Half wait forever, half with a (never reached) deadline: both must be woken by finish().
      statuses[i] = (i % 2) ? ex->wait() : ex->wait_until(safety_deadline());
      seen[i] = ex->state();
    });
  }
  // The probe runs in on_suspend, right before each waiter parks: wait until all are there.
  ASSERT_TRUE(eventually([&] { return g_plain_parks.load() == kWaiters; }));
  std::thread finisher([&] { EXPECT_TRUE(ex->finish(State::succeeded)); });
  finisher.join();
  for (auto& t : waiters) t.join();
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_EQ(statuses[i], WaitStatus::done) << "waiter " << i;
    EXPECT_EQ(seen[i], State::succeeded) << "waiter " << i;
  }
  EXPECT_EQ(CountingHooks::suspends.load(), kWaiters);
  EXPECT_EQ(CountingHooks::resumes.load(), kWaiters);
  EXPECT_EQ(CountingHooks::mismatches.load(), 0);
}

TEST_F(ExecutionThreads, SwitchHooksPairAroundEachParkAndSkipTheFastPath) {
  CountingHooks hooks;
  ExecutionRef done = Execution::create("done");
  done->finish(State::succeeded);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(done->wait(), WaitStatus::done);
  EXPECT_EQ(done->wait_until(Clock::now() + 1h), WaitStatus::done);
  EXPECT_EQ(CountingHooks::suspends.load(), 0) << "the fast path (already done) must not call hooks";
  EXPECT_EQ(CountingHooks::resumes.load(), 0);

  // Three real parks of this thread, each ended by another thread.
  g_plain_parks = 0;
  CountingHooks::on_suspend_probe = &count_plain_park;
  for (int k = 1; k <= 3; ++k) {
    ExecutionRef gate = Execution::create("gate");
    std::thread finisher([&] {
      ASSERT_TRUE(eventually([&] { return g_plain_parks.load() == k; }));
      gate->finish(State::succeeded);
    });
    EXPECT_EQ(gate->wait(), WaitStatus::done);
    finisher.join();
    EXPECT_EQ(CountingHooks::suspends.load(), k);
    EXPECT_EQ(CountingHooks::resumes.load(), k);
  }
  EXPECT_EQ(CountingHooks::mismatches.load(), 0);
}

TEST_F(ExecutionThreads, InterruptIsRecordedButDoesNotAffectPlainThreadWaits) {
  // interrupt() concerns waits made *by* the interrupted execution's fiber. A plain thread is not
  // an execution: its waits are not interrupted by anyone.
  ExecutionRef ex = Execution::create("x");
  ex->interrupt();
  EXPECT_TRUE(ex->interrupted());
  ExecutionRef other = Execution::create("other");
  EXPECT_EQ(other->wait_until(Clock::now() + 5ms), WaitStatus::timeout);
  // A plain thread may still wait *on* an interrupted execution.
  std::thread finisher([&] { ex->finish(State::cancelled); });
  EXPECT_EQ(ex->wait_until(safety_deadline()), WaitStatus::done);
  finisher.join();
}

// ---- the wait graph: forwards --------------------------------------------------------------------

TEST_F(ExecutionThreads, ForwardToDetectsCycles) {
  ExecutionRef a = Execution::create("a"), b = Execution::create("b"), c = Execution::create("c");
  for (auto* e : {a.get(), b.get(), c.get()}) ASSERT_TRUE(e->start());

  EXPECT_THROW(a->forward_to(*a), DeadlockError);
  EXPECT_EQ(a->blocked_on(), 0u) << "a refused forward leaves no edge";

  a->forward_to(*b);
  EXPECT_EQ(a->blocked_on(), b->id());
  EXPECT_THROW(b->forward_to(*a), DeadlockError);
  EXPECT_EQ(b->blocked_on(), 0u);

  b->forward_to(*c);
  try {
    c->forward_to(*a);  // c → a → b → c
    ADD_FAILURE() << "a three-cycle of forwards was not detected";
  } catch (const DeadlockError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(c->id())), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(a->id())), std::string::npos) << msg;
  }
  EXPECT_EQ(c->blocked_on(), 0u);

  // A finished execution ends every path through it: no cycle any more.
  ExecutionRef d = Execution::create("d");
  ASSERT_TRUE(d->start());
  c->finish(State::succeeded);
  EXPECT_EQ(c->blocked_on(), 0u);
  d->forward_to(*a);  // d → a → b → c (done): fine
  EXPECT_EQ(d->blocked_on(), a->id());

  // Finishing clears the forwarding edge.
  for (auto* e : {a.get(), b.get(), d.get()}) e->finish(State::succeeded);
  EXPECT_EQ(a->blocked_on(), 0u);
  EXPECT_EQ(b->blocked_on(), 0u);
  EXPECT_EQ(d->blocked_on(), 0u);
}

TEST_F(ExecutionThreads, WouldDeadlockAsksWithoutWaiting) {
  ExecutionRef a = Execution::create("a"), b = Execution::create("b");
  ASSERT_TRUE(a->start());
  ASSERT_TRUE(b->start());
  EXPECT_TRUE(a->would_deadlock(*a)) << "waiting on oneself";
  EXPECT_FALSE(a->would_deadlock(*b));
  a->forward_to(*b);
  EXPECT_TRUE(b->would_deadlock(*a)) << "a completes through b: b waiting on a never ends";
  EXPECT_FALSE(a->would_deadlock(*b)) << "asking adds no edge";
  EXPECT_EQ(b->blocked_on(), 0u);
  b->finish(State::succeeded);
  a->finish(State::succeeded);
  EXPECT_FALSE(b->would_deadlock(*a)) << "finished executions end every path";
}

TEST_F(ExecutionThreads, SleepUntilOnAPlainThreadBlocksUntilTheDeadline) {
  CountingHooks hooks;
  const auto deadline = Clock::now() + 20ms;
  EXPECT_EQ(sleep_until(deadline), WaitStatus::timeout);
  EXPECT_GE(Clock::now(), deadline);
  EXPECT_EQ(CountingHooks::suspends.load(), 1) << "a blocking sleep is a park: hooks around it";
  EXPECT_EQ(CountingHooks::resumes.load(), 1);
  EXPECT_EQ(CountingHooks::mismatches.load(), 0);
}

// ---- promises: executions completed from outside ------------------------------------------------

TEST_F(ExecutionThreads, APromiseIsRunningFromTheStartAndNeverSubmitted) {
  ExecutionRef parent = Execution::create("parent");
  ExecutionRef p = Execution::promise("p", Kind::workflow, parent->id());
  EXPECT_EQ(p->state(), State::running);
  EXPECT_EQ(p->kind(), Kind::workflow);
  EXPECT_EQ(p->parent_id(), parent->id());
  EXPECT_GT(p->started_ns(), 0);
  EXPECT_EQ(p->submitted_ns(), 0);
  EXPECT_FALSE(p->cancel_if_not_started()) << "a promise is never 'not started'";
  EXPECT_EQ(Execution::promise("q")->parent_id(), 0u);
  EXPECT_TRUE(p->finish(State::cancelled));
}

TEST_F(ExecutionThreads, APromiseSettledOnAnotherThreadWakesItsWaitersAndRunsItsCallbacks) {
  ExecutionRef p = Execution::promise("p");
  std::atomic<int> calls{0};
  p->add_callback([](Execution& ex, void* a) {
    if (ex.state() == State::failed) static_cast<std::atomic<int>*>(a)->fetch_add(1);
  }, &calls);
  Event waiting;
  std::atomic<int> status{-1};
  std::thread waiter([&] {
    waiting.set();
    status = static_cast<int>(p->wait_until(safety_deadline()));
  });
  ASSERT_TRUE(waiting.wait());
  std::thread settler([&] { EXPECT_TRUE(p->finish(State::failed)); });
  settler.join();
  waiter.join();
  EXPECT_EQ(status.load(), static_cast<int>(WaitStatus::done));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_GT(p->finished_ns(), 0);
}

TEST_F(ExecutionThreads, ConcurrentSettlesOfAPromiseExactlyOneWins) {
  for (int round = 0; round < 200; ++round) {
    ExecutionRef p = Execution::promise("p");
    Event go;
    std::atomic<int> wins{0};
    std::vector<std::thread> threads;
    const State outcomes[] = {State::succeeded, State::failed, State::cancelled, State::succeeded};
    for (State s : outcomes) {
      threads.emplace_back([&, s] {
        go.wait();
        if (p->finish(s)) wins.fetch_add(1);
      });
    }
    go.set();
    for (std::thread& t : threads) t.join();
    ASSERT_EQ(wins.load(), 1);
    ASSERT_TRUE(p->done());
  }
}

TEST_F(ExecutionThreads, PromisesTakePartInTheWaitGraph) {
  // An execution that follows a promise (an async body's execution) is in the wait graph like any.
  ExecutionRef a = Execution::promise("a"), b = Execution::promise("b");
  a->forward_to(*b);
  EXPECT_TRUE(b->would_deadlock(*a));
  EXPECT_THROW(b->forward_to(*a), DeadlockError);
  b->finish(State::succeeded);
  a->finish(State::succeeded);
}

TEST_F(ExecutionThreads, APromiseThatAwaitsItsMembersIsInTheWaitGraphUntilItFinishes) {
  // A combining handle (the bindings' gather/join): a wait on it from a member, or from what a
  // member waits on, closes a cycle.
  ExecutionRef a = Execution::create("a"), b = Execution::create("b"), c = Execution::create("c");
  ExecutionRef done = Execution::create("done");
  for (auto* e : {a.get(), b.get(), c.get(), done.get()}) ASSERT_TRUE(e->start());
  ASSERT_TRUE(done->finish(State::succeeded));
  ExecutionRef g = Execution::promise("gather");
  g->awaits_members({a, b, done});
  EXPECT_TRUE(a->would_deadlock(*g));
  EXPECT_TRUE(b->would_deadlock(*g));
  EXPECT_FALSE(c->would_deadlock(*g)) << "not a member";
  c->forward_to(*g);  // c waits on the handle: b waiting on c would wait on itself
  EXPECT_THROW(b->forward_to(*c), DeadlockError);
  EXPECT_EQ(b->blocked_on(), 0u);
  ASSERT_TRUE(a->finish(State::succeeded));
  EXPECT_TRUE(b->would_deadlock(*g)) << "b is still unfinished";
  ASSERT_TRUE(g->finish(State::failed));  // settled: no path through it any more
  EXPECT_FALSE(b->would_deadlock(*g));
  b->forward_to(*c);
  EXPECT_EQ(b->blocked_on(), c->id());
  // On a handle already finished, or over finished members only, it links nothing.
  ExecutionRef h = Execution::promise("h");
  h->awaits_members({done});
  ExecutionRef k = Execution::promise("k");
  ASSERT_TRUE(k->finish(State::succeeded));
  k->awaits_members({b});
  EXPECT_FALSE(b->would_deadlock(*k));
  for (auto* e : {b.get(), c.get(), h.get()}) e->finish(State::succeeded);
}

// ---- terminating a tree ----------------------------------------------------------------------------

// TreeLog: what a TreeFinisher saw. The root fails, its descendants are cancelled; `decline` is
// left unfinished (finish returns false).
struct TreeLog {
  Execution* root = nullptr;
  Execution* decline = nullptr;
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<bool> parked;
  std::vector<bool> interrupted_before_finish;
  std::atomic<int> finished{0};
};

bool log_and_finish(Execution& ex, bool was_parked, void* arg) {
  auto* log = static_cast<TreeLog*>(arg);
  {
    std::lock_guard<std::mutex> g(log->mu);
    log->order.push_back(ex.name());
    log->parked.push_back(was_parked);
    log->interrupted_before_finish.push_back(ex.interrupted());
  }
  if (&ex == log->decline) return false;
  const bool ok = ex.finish(&ex == log->root ? State::failed : State::cancelled);
  if (ok) log->finished.fetch_add(1);
  return ok;
}

TEST_F(ExecutionThreads, TerminateTreeFinishesTheRootThenEveryRecordedDescendant) {
  ExecutionRef root = Execution::create("root"), a = Execution::create("a"), b = Execution::create("b");
  ExecutionRef c = Execution::create("c"), detached = Execution::create("detached");
  root->start();
  a->start();
  root->add_child(a);
  root->add_child(b);  // pending: never started
  a->add_child(c);
  detached->set_parent_id(root->id());  // a parent, but not a recorded child: not in the tree
  TreeLog log;
  log.root = root.get();
  EXPECT_TRUE(root->terminate_tree(&log_and_finish, &log));
  EXPECT_EQ(root->state(), State::failed);
  EXPECT_EQ(a->state(), State::cancelled);
  EXPECT_EQ(b->state(), State::cancelled);
  EXPECT_EQ(c->state(), State::cancelled);
  EXPECT_EQ(detached->state(), State::pending);
  EXPECT_FALSE(detached->interrupted());
  ASSERT_EQ(log.order.size(), 4u);
  EXPECT_EQ(log.order.front(), "root");
  for (bool i : log.interrupted_before_finish) EXPECT_TRUE(i) << "interrupt() comes before finish";
  for (bool p : log.parked) EXPECT_FALSE(p);
  EXPECT_EQ(log.finished.load(), 4);
  detached->finish(State::cancelled);
}

TEST_F(ExecutionThreads, TerminateTreeOnAFinishedExecutionDoesNothing) {
  ExecutionRef root = Execution::create("root"), a = Execution::create("a");
  root->add_child(a);
  root->finish(State::succeeded);
  TreeLog log;
  EXPECT_FALSE(root->terminate_tree(&log_and_finish, &log));
  EXPECT_TRUE(log.order.empty());
  EXPECT_FALSE(a->interrupted());
  EXPECT_FALSE(a->done());
  a->finish(State::cancelled);
}

TEST_F(ExecutionThreads, TerminateTreeSkipsFinishedChildrenAndLeavesADeclinedOnesChildren) {
  ExecutionRef root = Execution::create("root"), done = Execution::create("done");
  ExecutionRef declined = Execution::create("declined"), grandchild = Execution::create("grandchild");
  root->add_child(done);
  root->add_child(declined);
  declined->add_child(grandchild);
  done->finish(State::succeeded);
  TreeLog log;
  log.root = root.get();
  log.decline = declined.get();
  EXPECT_TRUE(root->terminate_tree(&log_and_finish, &log));
  EXPECT_EQ(log.order, (std::vector<std::string>{"root", "declined"}));
  EXPECT_TRUE(declined->interrupted()) << "interrupted, then its finisher declined";
  EXPECT_FALSE(declined->done());
  EXPECT_FALSE(grandchild->interrupted());
  EXPECT_FALSE(grandchild->done());
  declined->finish(State::cancelled);
  grandchild->finish(State::cancelled);
}

TEST_F(ExecutionThreads, TerminateTreeDeclinedRootReturnsFalseAndLeavesItsChildren) {
  ExecutionRef root = Execution::create("root"), a = Execution::create("a");
  root->add_child(a);
  TreeLog log;
  log.root = root.get();
  log.decline = root.get();
  EXPECT_FALSE(root->terminate_tree(&log_and_finish, &log));
  EXPECT_FALSE(a->interrupted());
  root->finish(State::cancelled);
  a->finish(State::cancelled);
}

void count_wake(void* arg) { static_cast<std::atomic<int>*>(arg)->fetch_add(1); }

TEST_F(ExecutionThreads, TerminateTreeReportsAParkedExecutionAndWakesItBeforeFinishing) {
  // A waker stands for a fiber parked on something interrupt() can wake (a wait-set, a sleep).
  ExecutionRef root = Execution::create("root"), a = Execution::create("a");
  root->add_child(a);
  std::atomic<int> wakes{0};
  a->set_waker(&count_wake, &wakes);
  TreeLog log;
  log.root = root.get();
  EXPECT_TRUE(root->terminate_tree(&log_and_finish, &log));
  ASSERT_EQ(log.parked.size(), 2u);
  EXPECT_FALSE(log.parked[0]);
  EXPECT_TRUE(log.parked[1]);
  EXPECT_EQ(wakes.load(), 1);
  a->set_waker(nullptr, nullptr);
}

TEST_F(ExecutionThreads, TerminateTreeWalksADeepTreeWithoutRecursion) {
  constexpr int kDepth = 100000;
  std::vector<ExecutionRef> chain;
  chain.reserve(kDepth);
  for (int i = 0; i < kDepth; ++i) {
    chain.push_back(Execution::create("link"));
    if (i) chain[i - 1]->add_child(chain[i]);
  }
  TreeLog log;
  log.root = chain[0].get();
  run_on_small_stack([&] { EXPECT_TRUE(chain[0]->terminate_tree(&log_and_finish, &log)); });
  EXPECT_EQ(log.finished.load(), kDepth);
  EXPECT_EQ(chain.back()->state(), State::cancelled);
}

TEST_F(ExecutionThreads, ConcurrentTerminateTreeFinishesEachExecutionOnce) {
  ExecutionRef root = Execution::create("root");
  std::vector<ExecutionRef> kids;
  for (int i = 0; i < 64; ++i) {
    kids.push_back(Execution::create("k"));
    root->add_child(kids.back());
    for (int j = 0; j < 4; ++j) {
      ExecutionRef g = Execution::create("g");
      kids.back()->add_child(g);
      kids.push_back(g);
    }
  }
  TreeLog log;
  log.root = root.get();
  Event go;
  std::atomic<int> roots_won{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      go.wait();
      if (root->terminate_tree(&log_and_finish, &log)) roots_won.fetch_add(1);
    });
  }
  go.set();
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(roots_won.load(), 1);
  EXPECT_EQ(root->state(), State::failed);
  for (const ExecutionRef& k : kids) EXPECT_EQ(k->state(), State::cancelled);
  // Only the thread that finished the root walks its children; the others stop at the root.
  EXPECT_EQ(log.finished.load(), 1 + static_cast<int>(kids.size()));
}

// ---- waits made by executions on fibers ----------------------------------------------------------

class ExecutionFibers : public FiberTest {};

// yield_until: a fiber-side poll (lets other fibers of the worker run) with the safety net.
bool yield_until(const std::function<bool()>& pred) {
  const auto deadline = safety_deadline();
  while (!pred()) {
    if (Clock::now() > deadline) return false;
    boost::this_fiber::yield();
    std::this_thread::yield();
  }
  return true;
}

TEST_F(ExecutionFibers, WaitOnSelfThrowsDeadlockError) {
  std::string message;
  bool timed_threw = false;
  Fn body = [&](Execution& ex) {
    EXPECT_EQ(current_execution(), &ex);
    try {
      ex.wait();
    } catch (const DeadlockError& e) {
      message = e.what();
    }
    try {
      ex.wait_until(Clock::now() + 1h);
    } catch (const DeadlockError&) {
      timed_threw = true;
    }
    EXPECT_EQ(ex.blocked_on(), 0u) << "a refused wait leaves no edge";
    ex.finish(State::succeeded);
  };
  ExecutionRef a = submit("selfish", &body);
  wait_done(a);
  shutdown();
  EXPECT_EQ(a->state(), State::succeeded);
  EXPECT_NE(message.find("waits on itself"), std::string::npos) << message;
  EXPECT_TRUE(timed_threw);
}

TEST_F(ExecutionFibers, WaitOnAWaitingAncestorThrowsDeadlockError) {
  // a waits on its child b, b waits on its child c; c then waits on a: c → a → b → c.
  ExecutionRef a, b, c;
  std::mutex mu;  // guards the refs above (written by fibers, read by other fibers)
  std::atomic<int> deadlocks{0};
  WaitStatus a_status = WaitStatus::timeout, b_status = WaitStatus::timeout;
  std::string message;
  Fn c_body = [&](Execution& self) {
    ExecutionRef ra, rb;
    {
      std::lock_guard<std::mutex> g(mu);
      ra = a;
      rb = b;
    }
    // Both ancestors announce their edge before they park: wait for both edges to exist.
    EXPECT_TRUE(yield_until([&] { return ra->blocked_on() == rb->id() && rb->blocked_on() == self.id(); }));
    try {
      ra->wait();
    } catch (const DeadlockError& e) {
      deadlocks.fetch_add(1);
      message = e.what();
    }
    self.finish(State::succeeded);
  };
  Fn b_body = [&](Execution& self) {
    ExecutionRef child = Execution::create("c");
    child->set_payload(&c_body);
    child->set_parent_id(self.id());
    {
      std::lock_guard<std::mutex> g(mu);
      c = child;
    }
    sched_->submit(child);
    b_status = child->wait();
    self.finish(State::succeeded);
  };
  Fn a_body = [&](Execution& self) {
    ExecutionRef child = Execution::create("b");
    child->set_payload(&b_body);
    {
      std::lock_guard<std::mutex> g(mu);
      b = child;
    }
    sched_->submit(child);
    a_status = child->wait();
    self.finish(State::succeeded);
  };
  {
    std::lock_guard<std::mutex> g(mu);
    a = Execution::create("a");
    a->set_payload(&a_body);
  }
  sched_->submit(a);
  wait_done(a);
  shutdown();
  EXPECT_EQ(deadlocks.load(), 1);
  EXPECT_NE(message.find("deadlock"), std::string::npos) << message;
  EXPECT_EQ(a_status, WaitStatus::done);
  EXPECT_EQ(b_status, WaitStatus::done);
  for (auto* e : {a.get(), b.get(), c.get()}) {
    EXPECT_EQ(e->state(), State::succeeded);
    EXPECT_EQ(e->blocked_on(), 0u);
  }
}

TEST_F(ExecutionFibers, WaitOnADependentThrowsDeadlockError) {
  // b is parked until a finishes (a dependency); a waiting on b could never end.
  bool threw = false;
  ExecutionRef b;
  Fn a_body = [&](Execution& self) {
    b = Execution::create("b");
    sched_->submit(b, {ExecutionRef(&self)});
    EXPECT_EQ(b->state(), State::waiting);
    try {
      b->wait();
    } catch (const DeadlockError&) {
      threw = true;
    }
    self.finish(State::succeeded);
  };
  ExecutionRef a = submit("a", &a_body);
  wait_done(a);
  ASSERT_TRUE(b);
  wait_done(b);
  shutdown();
  EXPECT_TRUE(threw);
  EXPECT_EQ(b->state(), State::succeeded) << "b ran once its dependency succeeded";
}

TEST_F(ExecutionFibers, WaitOnAnExecutionThatForwardsToTheWaiterThrowsDeadlockError) {
  // a forwards to b (a completes when b does); b then waits on a: b → a → b.
  bool threw = false;
  Execution* forwarder = nullptr;  // set by a's body before b is submitted
  Fn b_body = [&](Execution& self) {
    try {
      forwarder->wait();
    } catch (const DeadlockError&) {
      threw = true;
    }
    self.finish(State::succeeded);
  };
  Fn a_body = [&](Execution& self) {
    ExecutionRef b = Execution::create("b");
    b->set_payload(&b_body);
    self.forward_to(*b);
    EXPECT_EQ(self.blocked_on(), b->id());
    b->add_callback([](Execution& target, void* arg) { static_cast<Execution*>(arg)->finish(target.state()); },
                    &self);  // `a` outlives b's completion: the test holds a reference
    forwarder = &self;
    sched_->submit(b);
    // a's body returns without finishing a: the forward does.
  };
  ExecutionRef a = submit("a", &a_body);
  wait_done(a);
  shutdown();
  EXPECT_TRUE(threw);
  EXPECT_EQ(a->state(), State::succeeded);
  EXPECT_EQ(a->blocked_on(), 0u);
}

TEST_F(ExecutionFibers, InterruptWakesAParkedFiber) {
  ExecutionRef gate = Execution::create("gate");     // never finished while `a` waits
  ExecutionRef other = Execution::create("other");   // never finished while `a` waits
  WaitStatus first = WaitStatus::done, second = WaitStatus::done;
  std::atomic<int> parks_after_interrupt{0};
  Fn body = [&](Execution& self) {
    first = gate->wait_until(safety_deadline());
    // Later waits by an interrupted execution return at once.
    const auto before = Clock::now();
    second = other->wait_until(safety_deadline());
    if (Clock::now() - before > 10s) parks_after_interrupt.fetch_add(1);
    EXPECT_EQ(self.blocked_on(), 0u);
    self.finish(State::cancelled);
  };
  ExecutionRef a = submit("a", &body);
  ASSERT_TRUE(eventually([&] { return a->blocked_on() == gate->id(); }));
  EXPECT_EQ(a->state(), State::running) << "a parked fiber stays running";
  a->interrupt();
  wait_done(a);
  EXPECT_EQ(first, WaitStatus::interrupted);
  EXPECT_EQ(second, WaitStatus::interrupted);
  EXPECT_EQ(parks_after_interrupt.load(), 0);
  EXPECT_TRUE(a->interrupted());
  EXPECT_FALSE(gate->done());
  EXPECT_FALSE(other->done());
  shutdown();
  gate->finish(State::cancelled);
  other->finish(State::cancelled);
}

TEST_F(ExecutionFibers, InterruptOnlyWakesTheInterruptedWaiter) {
  // Two fibers park on the same gate; interrupting one leaves the other parked.
  ExecutionRef gate = Execution::create("gate");
  WaitStatus sa = WaitStatus::timeout, sb = WaitStatus::timeout;
  Fn body_a = [&](Execution& self) {
    sa = gate->wait_until(safety_deadline());
    self.finish(State::cancelled);
  };
  Fn body_b = [&](Execution& self) {
    sb = gate->wait_until(safety_deadline());
    self.finish(State::succeeded);
  };
  ExecutionRef a = submit("a", &body_a), b = submit("b", &body_b);
  ASSERT_TRUE(eventually([&] { return a->blocked_on() == gate->id() && b->blocked_on() == gate->id(); }));
  a->interrupt();
  wait_done(a);
  EXPECT_EQ(sa, WaitStatus::interrupted);
  EXPECT_FALSE(b->done());
  EXPECT_EQ(b->blocked_on(), gate->id());
  gate->finish(State::succeeded);
  wait_done(b);
  shutdown();
  EXPECT_EQ(sb, WaitStatus::done);
}

TEST_F(ExecutionFibers, TimedWaitInAFiberTimesOut) {
  ExecutionRef gate = Execution::create("gate");
  WaitStatus status = WaitStatus::done;
  bool early = true;
  Fn body = [&](Execution& self) {
    const auto deadline = Clock::now() + 20ms;
    status = gate->wait_until(deadline);
    early = Clock::now() < deadline;
    EXPECT_EQ(self.blocked_on(), 0u);
    self.finish(State::succeeded);
  };
  ExecutionRef a = submit("a", &body);
  wait_done(a);
  shutdown();
  EXPECT_EQ(status, WaitStatus::timeout);
  EXPECT_FALSE(early);
  EXPECT_FALSE(gate->done());
  gate->finish(State::cancelled);
}

std::atomic<int> g_fiber_parks{0};
void count_fiber_park(Execution* current) {
  if (current != nullptr) g_fiber_parks.fetch_add(1);
}

TEST_F(ExecutionFibers, SwitchHooksPairAroundEachFiberParkAndSkipTheFastPath) {
  constexpr int kFibers = 4;
  constexpr int kRounds = 3;
  CountingHooks hooks;
  g_fiber_parks = 0;
  CountingHooks::on_suspend_probe = &count_fiber_park;

  ExecutionRef done = Execution::create("done");
  done->finish(State::succeeded);
  std::vector<ExecutionRef> gates;
  for (int k = 0; k < kRounds; ++k) gates.push_back(Execution::create("gate"));
  std::atomic<int> fast_path_hooks{0};
  Fn body = [&](Execution& self) {
    for (int k = 0; k < kRounds; ++k) {
      // Fast path: already done, no hooks. Counted on this thread: no other fiber of this worker
      // runs unless this one parks, while another worker's fiber may park on its gate meanwhile
      // (the global count made this test fail once in CI, session 10).
      const auto before = CountingHooks::suspends_on_this_thread;
      EXPECT_EQ(done->wait(), WaitStatus::done);
      if (CountingHooks::suspends_on_this_thread != before) fast_path_hooks.fetch_add(1);
      // A real park, ended by the test's thread.
      EXPECT_EQ(gates[static_cast<std::size_t>(k)]->wait(), WaitStatus::done);
      EXPECT_EQ(current_execution(), &self);
    }
    self.finish(State::succeeded);
  };
  std::vector<ExecutionRef> fibers;
  for (int i = 0; i < kFibers; ++i) fibers.push_back(submit("f", &body));
  for (int k = 0; k < kRounds; ++k) {
    // Every fiber has called on_suspend for gate k (so it is about to park or parked) ...
    ASSERT_TRUE(eventually([&] { return g_fiber_parks.load() == kFibers * (k + 1); }));
    gates[static_cast<std::size_t>(k)]->finish(State::succeeded);  // ... and is woken from here.
  }
  // Poll instead of wait(): a wait from this thread would itself call the hooks.
  ASSERT_TRUE(eventually([&] {
    return std::all_of(fibers.begin(), fibers.end(), [](const ExecutionRef& f) { return f->done(); });
  }));
  // All fibers have ended their waits; (the fibers themselves may still be returning).
  EXPECT_EQ(CountingHooks::suspends.load(), kFibers * kRounds);
  EXPECT_EQ(CountingHooks::resumes.load(), kFibers * kRounds);
  EXPECT_EQ(CountingHooks::mismatches.load(), 0) << "on_resume on another thread or with wrong fiber-locals";
  EXPECT_EQ(fast_path_hooks.load(), 0);
  shutdown();
}

TEST_F(ExecutionFibers, SleepInAFiberTimesOut) {
  Duration slept{};
  WaitStatus status = WaitStatus::done;
  Fn body = [&](Execution& self) {
    const auto start = Clock::now();
    status = sleep_until(start + 20ms);
    slept = Clock::now() - start;
    EXPECT_EQ(current_execution(), &self);
    self.finish(State::succeeded);
  };
  ExecutionRef a = submit("sleeper", &body);
  wait_done(a);
  shutdown();
  EXPECT_EQ(status, WaitStatus::timeout);
  EXPECT_GE(slept, 20ms);
}

// The fiber of a finished execution still runs code (its done-callbacks): nothing can cancel it
// any more, so its waits end by their own deadline — not at once as 'interrupted' (a Python
// callback's distaff.sleep raised CancelledError). Also after a cancel that interrupted it.
TEST_F(ExecutionFibers, WaitsOnTheFiberOfAFinishedExecutionEndByTheirDeadline) {
  for (State how : {State::succeeded, State::cancelled}) {
    Duration slept{};
    WaitStatus slept_status = WaitStatus::done;
    WaitStatus waited_status = WaitStatus::done;
    Execution* interruptible = reinterpret_cast<Execution*>(1);
    std::atomic<bool> ended{false};  // the body's writes happen before its release store
    ExecutionRef other = Execution::create("other", Kind::task);
    Fn body = [&](Execution& self) {
      if (how == State::cancelled) self.interrupt();
      self.finish(how);
      interruptible = interruptible_execution();
      const auto start = Clock::now();
      slept_status = sleep_until(start + 20ms);
      slept = Clock::now() - start;
      waited_status = other->wait_until(Clock::now() + 10ms);
      ended.store(true, std::memory_order_release);
    };
    ExecutionRef a = submit("finished", &body);
    wait_done(a);  // finished before the body ends: then wait for its end
    ASSERT_TRUE(eventually([&] { return ended.load(std::memory_order_acquire); }));
    if (how == State::cancelled) {
      // Interrupted, then finished: the body's later waits end at once (interrupt()'s contract).
      EXPECT_EQ(interruptible, a.get());
      EXPECT_EQ(slept_status, WaitStatus::interrupted);
      EXPECT_EQ(waited_status, WaitStatus::interrupted);
    } else {
      EXPECT_EQ(interruptible, nullptr);
      EXPECT_EQ(slept_status, WaitStatus::timeout);
      EXPECT_GE(slept, 20ms);
      EXPECT_EQ(waited_status, WaitStatus::timeout);
    }
  }
  shutdown();
}

// One worker: a sleeping fiber must leave its worker free for the others.
class ExecutionFibersOneWorker : public ExecutionFibers {
 protected:
  unsigned workers() const override { return 1; }
};

TEST_F(ExecutionFibersOneWorker, SleepingFiberYieldsItsWorkerAndInterruptWakesIt) {
  std::atomic<bool> about_to_sleep{false};
  WaitStatus status = WaitStatus::done;
  ExecutionRef sleeper;
  Fn sleeper_body = [&](Execution& self) {
    about_to_sleep = true;
    status = sleep_until(safety_deadline());  // only an interrupt ends this early
    self.finish(State::cancelled);
  };
  Fn waker_body = [&](Execution& self) {
    // Same worker: the sleeper runs (and parks) while this fiber yields.
    EXPECT_TRUE(yield_until([&] { return about_to_sleep.load(); }));
    sleeper->interrupt();
    self.finish(State::succeeded);
  };
  sleeper = submit("sleeper", &sleeper_body);
  ExecutionRef waker = submit("waker", &waker_body);
  wait_done(sleeper);
  wait_done(waker);
  shutdown();
  EXPECT_EQ(status, WaitStatus::interrupted);
  EXPECT_EQ(sleeper->state(), State::cancelled);
}

}  // namespace
}  // namespace distaff::test
