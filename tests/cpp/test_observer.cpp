// Observer and EventBuffer: the scheduler's observer seam. EventBufferThreads runs on plain
// std::threads only (TSan-covered, see core_test.hpp); ObserverTest runs every test with 1, 2, 4 and
// 8 workers (fibers: skipped under TSan).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core_test.hpp"
#include "distaff/execution.hpp"
#include "distaff/observer.hpp"
#include "distaff/scheduler.hpp"

namespace distaff::test {
namespace {

using Record = EventBuffer::Record;
using Ev = distaff::Event;  // test::Event is core_test.hpp's one-shot flag

// ---- EventBuffer on plain threads (TSan) ------------------------------------------------------------

class EventBufferThreads : public CoreTest {};

TEST_F(EventBufferThreads, ConcurrentWritersAndADrainerLoseNothingAndKeepTimeOrder) {
  constexpr int kThreads = 4;   // workers 0..2 and one "other thread" (-1)
  constexpr int kPerThread = 20'000;
  EventBuffer buf(3);
  std::vector<ExecutionRef> exs;
  for (int t = 0; t < kThreads; ++t) exs.push_back(Execution::create("e" + std::to_string(t)));
  std::atomic<int> done{0};
  std::vector<Record> drained;
  std::thread drainer([&] {
    // Drains while the writers write: batches, each in time order.
    while (done.load() < kThreads) {
      std::vector<Record> batch;
      buf.drain(batch);
      EXPECT_TRUE(std::is_sorted(batch.begin(), batch.end(),
                                 [](const Record& a, const Record& b) { return a.time_ns < b.time_ns; }));
      for (auto& r : batch) drained.push_back(std::move(r));
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      const int worker = t == kThreads - 1 ? -1 : t;
      for (int i = 0; i < kPerThread; ++i) {
        const EventKind k = i == 0 ? EventKind::submit : (i % 2 ? EventKind::suspend : EventKind::resume);
        buf.on_event(Ev{k, State::running, worker, monotonic_ns(), exs[t].get(), static_cast<std::uint64_t>(i)});
      }
      done.fetch_add(1);
    });
  }
  for (auto& w : writers) w.join();
  drainer.join();
  buf.drain(drained);
  ASSERT_EQ(drained.size(), static_cast<std::size_t>(kThreads * kPerThread));
  EXPECT_EQ(buf.lost(), 0u);
  // Per writer: every event once, in the order written, on the worker given.
  std::map<std::uint64_t, std::uint64_t> next;  // execution id -> next blocked_on expected
  for (const Record& r : drained) {
    auto& n = next[r.id];
    EXPECT_EQ(r.blocked_on, n) << "execution " << r.id;
    ++n;
    // A submit record keeps its execution for the drainer to read; others hold nothing.
    EXPECT_EQ(static_cast<bool>(r.execution), r.kind == EventKind::submit);
  }
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(next[exs[t]->id()], static_cast<std::uint64_t>(kPerThread));
}

TEST_F(EventBufferThreads, ASubmitRecordKeepsItsExecutionAliveUntilDrained) {
  EventBuffer buf(1);
  std::uint64_t id = 0;
  const std::int64_t live = live_executions();
  {
    ExecutionRef ex = Execution::create("kept");
    ex->set_workflow_id("wf-1");
    id = ex->id();
    buf.on_event(Ev{EventKind::submit, State::pending, 0, monotonic_ns(), ex.get(), 0});
  }
  EXPECT_EQ(live_executions(), live + 1) << "the record holds the only reference";
  std::vector<Record> out;
  buf.drain(out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].id, id);
  EXPECT_EQ(out[0].worker, 0);
  EXPECT_EQ(out[0].execution->name(), "kept");
  EXPECT_EQ(out[0].execution->workflow_id(), "wf-1");
  out.clear();
  EXPECT_EQ(live_executions(), live);
}

TEST_F(EventBufferThreads, EventKindNames) {
  EXPECT_STREQ(to_string(EventKind::submit), "submit");
  EXPECT_STREQ(to_string(EventKind::ready), "ready");
  EXPECT_STREQ(to_string(EventKind::start), "start");
  EXPECT_STREQ(to_string(EventKind::suspend), "suspend");
  EXPECT_STREQ(to_string(EventKind::resume), "resume");
  EXPECT_STREQ(to_string(EventKind::end), "end");
  EXPECT_STREQ(to_string(EventKind::finish), "finish");
}

// ---- the scheduler's notifications, across worker counts -------------------------------------------

class ObserverTest : public CoreTest, public ::testing::WithParamInterface<unsigned> {
 protected:
  using Fn = std::function<void(Execution&)>;
  unsigned workers() const { return GetParam(); }

  SchedulerOptions options() {
    SchedulerOptions o;
    o.workers = workers();
    o.stack_size = 256 * 1024;
    o.run = [](Execution& ex) {
      if (ex.done()) return;
      if (auto* fn = static_cast<Fn*>(ex.payload())) {
        (*fn)(ex);
      } else {
        ex.finish(State::succeeded);
      }
    };
    o.abandon = [](Execution& ex, Execution&) { ex.finish(State::cancelled); };
    return o;
  }

  Scheduler& start() {
    sched_ = std::make_unique<Scheduler>(options());
    buf_ = std::make_shared<EventBuffer>(sched_->capacity());
    EXPECT_EQ(sched_->set_observer(buf_), nullptr);
    EXPECT_TRUE(sched_->observed());
    return *sched_;
  }

  ExecutionRef submit(Fn* body, const std::vector<ExecutionRef>& deps = {}, const char* name = "x") {
    ExecutionRef ex = Execution::create(name);
    ex->set_payload(body);
    for (const auto& d : deps) ex->add_dependency(d);
    sched_->submit(ex, deps);
    return ex;
  }

  void shutdown() {
    if (!sched_ || sched_->joined()) return;
    sched_->close(false);
    sched_->join();
  }

  // events: everything recorded so far, by execution id, each in time order.
  std::map<std::uint64_t, std::vector<Record>> events() {
    std::vector<Record> all;
    buf_->drain(all);
    std::map<std::uint64_t, std::vector<Record>> out;
    for (auto& r : all) out[r.id].push_back(std::move(r));
    return out;
  }

  static std::vector<EventKind> kinds(const std::vector<Record>& rs) {
    std::vector<EventKind> out;
    for (const auto& r : rs) out.push_back(r.kind);
    return out;
  }

  void TearDown() override {
    shutdown();
    if (sched_) sched_->set_observer(nullptr);
    buf_.reset();
    sched_.reset();
    CoreTest::TearDown();
  }

  std::unique_ptr<Scheduler> sched_;
  std::shared_ptr<EventBuffer> buf_;
};

INSTANTIATE_TEST_SUITE_P(Workers, ObserverTest, ::testing::Values(1u, 2u, 4u, 8u),
                         [](const ::testing::TestParamInfo<unsigned>& param_info) { return "w" + std::to_string(param_info.param); });

using K = EventKind;

TEST_P(ObserverTest, EveryExecutionSubmitsStartsEndsAndFinishesOnce) {
  constexpr int kN = 20'000;
  Scheduler& s = start();
  std::vector<ExecutionRef> all;
  for (int i = 0; i < kN; ++i) all.push_back(submit(nullptr));
  ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
  shutdown();  // every fiber ended: its `end` is recorded
  auto ev = events();
  ASSERT_EQ(ev.size(), static_cast<std::size_t>(kN));
  for (const auto& ex : all) {
    const auto& rs = ev[ex->id()];
    // finish happens inside the body, before the fiber ends.
    ASSERT_EQ(kinds(rs), (std::vector<K>{K::submit, K::start, K::finish, K::end})) << ex->id();
    EXPECT_EQ(rs[0].worker, -1) << "submitted from the test thread";
    EXPECT_GE(rs[1].worker, 0);
    EXPECT_LT(rs[1].worker, static_cast<int>(workers()));
    EXPECT_EQ(rs[2].worker, rs[1].worker);
    EXPECT_EQ(rs[3].worker, rs[1].worker);
    EXPECT_EQ(rs[2].state, State::succeeded);
    EXPECT_EQ(rs[0].execution.get(), ex.get());
    for (std::size_t i = 1; i < rs.size(); ++i) EXPECT_LE(rs[i - 1].time_ns, rs[i].time_ns);
  }
}

TEST_P(ObserverTest, AWaitOnAChildSuspendsBlockedOnItAndResumesOnTheSameWorker) {
  Scheduler& s = start();
  Event release;
  std::uint64_t child_id = 0;
  Fn child_body = [&](Execution& ex) {
    EXPECT_TRUE(release.wait());  // blocks its worker's thread: the parent stays suspended meanwhile
    ex.finish(State::succeeded);
  };
  Fn parent_body = [&](Execution& ex) {
    ExecutionRef c = Execution::create("child");
    c->set_payload(&child_body);
    c->set_parent_id(ex.id());
    child_id = c->id();
    s.submit(c);
    EXPECT_EQ(c->wait_until(safety_deadline()), WaitStatus::done);
    ex.finish(State::succeeded);
  };
  ExecutionRef parent = submit(&parent_body, {}, "parent");
  ASSERT_TRUE(eventually([&] { return parent->blocked_on() != 0; }));
  release.set();
  ASSERT_EQ(parent->wait_until(safety_deadline()), WaitStatus::done);
  shutdown();
  auto ev = events();
  const auto& p = ev[parent->id()];
  ASSERT_EQ(kinds(p), (std::vector<K>{K::submit, K::start, K::suspend, K::resume, K::finish, K::end}));
  EXPECT_EQ(p[2].blocked_on, child_id);
  EXPECT_EQ(p[3].worker, p[2].worker) << "fibers never migrate";
  const auto& c = ev[child_id];
  ASSERT_EQ(kinds(c), (std::vector<K>{K::submit, K::start, K::finish, K::end}));
  EXPECT_EQ(c[0].worker, p[1].worker) << "submitted from the parent's worker";
  EXPECT_EQ(c[0].execution->parent_id(), parent->id());
  EXPECT_LT(c[2].time_ns, p[3].time_ns) << "the child finished before the parent resumed";
}

TEST_P(ObserverTest, SleepSuspendsWithNothingBlockedOn) {
  start();
  Fn body = [](Execution& ex) {
    EXPECT_EQ(sleep_until(Clock::now() + std::chrono::milliseconds(1)), WaitStatus::timeout);
    ex.finish(State::succeeded);
  };
  ExecutionRef ex = submit(&body);
  ASSERT_EQ(ex->wait_until(safety_deadline()), WaitStatus::done);
  shutdown();
  auto ev = events();
  const auto& rs = ev[ex->id()];
  ASSERT_EQ(kinds(rs), (std::vector<K>{K::submit, K::start, K::suspend, K::resume, K::finish, K::end}));
  EXPECT_EQ(rs[2].blocked_on, 0u);
}

TEST_P(ObserverTest, DependenciesReadyAndAbandonedOnes) {
  Scheduler& s = start();
  ExecutionRef ok = Execution::create("ok"), bad = Execution::create("bad");
  ExecutionRef gated = submit(nullptr, {ok}, "gated");
  ExecutionRef doomed = submit(nullptr, {bad}, "doomed");
  ok->finish(State::succeeded);   // never submitted: no events of its own
  bad->finish(State::failed);
  ASSERT_EQ(gated->wait_until(safety_deadline()), WaitStatus::done);
  ASSERT_EQ(doomed->wait_until(safety_deadline()), WaitStatus::done);
  ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
  shutdown();
  auto ev = events();
  EXPECT_EQ(ev.count(ok->id()), 0u);
  const auto& g = ev[gated->id()];
  ASSERT_EQ(kinds(g), (std::vector<K>{K::submit, K::ready, K::start, K::finish, K::end}));
  EXPECT_EQ(g[0].state, State::waiting);
  EXPECT_EQ(g[0].execution->dependency_ids(), std::vector<std::uint64_t>{ok->id()});
  const auto& d = ev[doomed->id()];
  ASSERT_EQ(kinds(d), (std::vector<K>{K::submit, K::finish}));
  EXPECT_EQ(d[1].state, State::cancelled);
}

TEST_P(ObserverTest, CancelledWhileQueuedFinishesWithoutStarting) {
  Scheduler& s = start();
  Event release;
  std::vector<Fn> blockers(workers(), [&](Execution& ex) {
    EXPECT_TRUE(release.wait());
    ex.finish(State::succeeded);
  });
  std::vector<ExecutionRef> bs;
  for (auto& b : blockers) {
    bs.push_back(submit(&b));
    ASSERT_TRUE(eventually([&] { return bs.back()->state() == State::running; }));
  }
  ExecutionRef queued = submit(nullptr, {}, "queued");
  EXPECT_TRUE(queued->cancel_if_not_started());
  release.set();
  ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
  shutdown();
  auto ev = events();
  const auto& q = ev[queued->id()];
  ASSERT_EQ(kinds(q), (std::vector<K>{K::submit, K::finish}));
  EXPECT_EQ(q[1].state, State::cancelled);
  EXPECT_EQ(q[1].worker, -1) << "cancelled from the test thread";
}

// A counting observer that checks it is never called after set_observer took it out.
class Counting final : public Observer {
 public:
  void on_event(const Ev&) noexcept override {
    if (detached.load()) late.fetch_add(1);
    calls.fetch_add(1);
  }
  std::atomic<bool> detached{false};
  std::atomic<std::int64_t> calls{0}, late{0};
};

TEST_P(ObserverTest, RemovingTheObserverWaitsOutCallsInFlightAndStopsEvents) {
  Scheduler& s = start();
  auto counting = std::make_shared<Counting>();
  EXPECT_EQ(s.set_observer(counting), buf_);  // replaces the buffer, hands it back
  std::atomic<bool> stop{false};
  std::vector<std::thread> submitters;
  for (int t = 0; t < 2; ++t) {
    submitters.emplace_back([&] {
      while (!stop.load()) {
        try {
          s.submit(Execution::create("spin"));
        } catch (const ShutdownError&) {
          return;
        }
      }
    });
  }
  ASSERT_TRUE(eventually([&] { return counting->calls.load() > 1000; }));
  std::shared_ptr<Observer> old = s.set_observer(nullptr);
  EXPECT_EQ(old, counting);
  counting->detached = true;  // from here on, a call would be one that set_observer did not wait out
  EXPECT_FALSE(s.observed());
  const std::int64_t calls = counting->calls.load();
  stop = true;
  for (auto& t : submitters) t.join();
  ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
  EXPECT_EQ(counting->late.load(), 0);
  EXPECT_EQ(counting->calls.load(), calls);
}

TEST_P(ObserverTest, AnObserverSeesOnlyItsOwnScheduler) {
  Scheduler& s = start();
  Scheduler other(options());
  ExecutionRef mine = submit(nullptr), theirs = Execution::create("theirs");
  other.submit(theirs);
  ASSERT_EQ(mine->wait_until(safety_deadline()), WaitStatus::done);
  ASSERT_EQ(theirs->wait_until(safety_deadline()), WaitStatus::done);
  ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
  other.close(false);
  other.join();
  shutdown();
  auto ev = events();
  EXPECT_EQ(ev.count(theirs->id()), 0u);
  EXPECT_EQ(ev[mine->id()].size(), 4u);
  EXPECT_FALSE(other.observed());
}

}  // namespace
}  // namespace distaff::test
