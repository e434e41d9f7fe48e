// Timer: the one thread that fires timeouts. Plain threads only, so the suite runs under TSan too.

#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
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
  const auto id = t.schedule(Clock::now() + std::chrono::milliseconds(5), &Fired::record, &gone);
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

}  // namespace
}  // namespace distaff::test
