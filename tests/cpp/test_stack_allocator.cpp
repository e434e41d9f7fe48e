// StackPool: the fiber stacks' own mmap allocator (guard pages, caching, the guard limit).
//
// Suites:
//   StackPoolTest     single-threaded pool behaviour, guard pages (fork()ed children that fault);
//                     skipped under TSan like every non-"Threads" suite (core_test.hpp).
//   StackPoolThreads  the process-wide guard accounting under concurrent allocation (TSan-safe).

#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core_test.hpp"
#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"
// The pool is an internal of the core (cpp/src/detail); the test target only has the public
// include directory, so reach it relative to this file rather than widening the build's paths.
#include "../../cpp/src/detail/stack_allocator.hpp"

namespace distaff::test {
namespace {

using detail::StackPool;
using boost::context::stack_context;

// The allocator's built-in guard limit (stack_allocator.cpp); tests that lower it restore this.
constexpr std::size_t kDefaultGuardLimit = 20000;

std::size_t page() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

char* top(const stack_context& sc) { return static_cast<char*>(sc.sp); }
bool guarded(const StackPool& pool, const stack_context& sc) { return sc.size == pool.size(); }

// protection_of: the permission field of /proc/self/maps ("rw-p", "---p", ...) for the mapping that
// contains `addr`, or "" if it is not mapped. A check that needs no fault.
std::string protection_of(const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perms) == 3 && lo <= a && a < hi) return perms;
  }
  return "";
}

// dies_by_sigsegv: runs `fn` in a fork()ed child with the default SIGSEGV action (no core file) and
// reports whether the child was killed by SIGSEGV. A child that survives exits with 0.
bool dies_by_sigsegv(const std::function<void()>& fn, int* exit_status = nullptr) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct rlimit no_core {0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    // Under ASan this needs allow_user_segv_handler=1 (see __asan_default_options below).
    ::signal(SIGSEGV, SIG_DFL);
    fn();
    ::_exit(0);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) {
    ADD_FAILURE() << "fork/waitpid failed";
    return false;
  }
  if (exit_status) *exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

class StackPoolTest : public CoreTest {
 protected:
  void SetUp() override {
    CoreTest::SetUp();
    if (IsSkipped()) return;
    StackPool::set_guard_limit(kDefaultGuardLimit);
    guarded_baseline_ = StackPool::guarded_mapped();
  }
  void TearDown() override {
    if (!IsSkipped()) {
      StackPool::set_guard_limit(kDefaultGuardLimit);
      EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_) << "guarded stacks leaked or double-counted";
    }
    CoreTest::TearDown();
  }
  std::size_t guarded_baseline_ = 0;
};

TEST_F(StackPoolTest, SizeIsPageRoundedWithAMinimum) {
  const std::size_t p = page();
  EXPECT_EQ(StackPool(64 * 1024 + 1).size(), 64 * 1024 + p);
  EXPECT_EQ(StackPool(256 * 1024).size(), 256 * 1024u);
  EXPECT_EQ(StackPool(1).size(), 16 * p) << "at least 16 pages";
  StackPool pool(64 * 1024);
  EXPECT_EQ(pool.mapped(), 0u) << "nothing is mapped before the first allocate()";
  EXPECT_EQ(pool.cached(), 0u);
}

TEST_F(StackPoolTest, AllocateDeallocateReuse) {
  StackPool pool(64 * 1024);
  stack_context a = pool.allocate();
  EXPECT_EQ(pool.mapped(), 1u);
  EXPECT_EQ(pool.cached(), 0u);
  ASSERT_TRUE(guarded(pool, a));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.sp) % page(), 0u) << "the top is page aligned";
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 1);
  // The whole usable range is writable (only touched pages cost memory).
  top(a)[-1] = 1;
  top(a)[-static_cast<std::ptrdiff_t>(a.size)] = 2;
  EXPECT_EQ(protection_of(top(a) - a.size), "rw-p");

  pool.deallocate(a);
  EXPECT_EQ(pool.cached(), 1u);
  EXPECT_EQ(pool.mapped(), 1u) << "deallocate caches, it does not unmap";
  stack_context b = pool.allocate();
  EXPECT_EQ(b.sp, a.sp) << "a cached stack is reused";
  EXPECT_EQ(b.size, a.size);
  EXPECT_EQ(pool.cached(), 0u);
  EXPECT_EQ(pool.mapped(), 1u);

  std::vector<stack_context> more;
  for (int i = 0; i < 9; ++i) more.push_back(pool.allocate());
  EXPECT_EQ(pool.mapped(), 10u);
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 10);
  std::set<void*> tops{b.sp};
  for (auto& sc : more) tops.insert(sc.sp);
  EXPECT_EQ(tops.size(), 10u) << "live stacks never share memory";
  for (auto& sc : more) pool.deallocate(sc);
  pool.deallocate(b);
  EXPECT_EQ(pool.cached(), 10u);
  EXPECT_EQ(pool.mapped(), 10u);
}

TEST_F(StackPoolTest, TrimUnmapsOnlyCachedStacks) {
  StackPool pool(64 * 1024);
  std::vector<stack_context> in_use, spare;
  for (int i = 0; i < 2; ++i) in_use.push_back(pool.allocate());
  for (int i = 0; i < 5; ++i) spare.push_back(pool.allocate());
  for (auto& sc : spare) pool.deallocate(sc);
  EXPECT_EQ(pool.mapped(), 7u);
  EXPECT_EQ(pool.cached(), 5u);

  pool.trim(3);
  EXPECT_EQ(pool.cached(), 3u);
  EXPECT_EQ(pool.mapped(), 5u);
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 5);
  pool.trim(10);  // keeping more than there is: no-op
  EXPECT_EQ(pool.cached(), 3u);

  pool.trim(0);
  EXPECT_EQ(pool.cached(), 0u);
  EXPECT_EQ(pool.mapped(), 2u);
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 2);
  // The trimmed stacks' memory is gone; the stacks in use are intact.
  EXPECT_EQ(protection_of(top(spare[0]) - 1), "");
  for (auto& sc : in_use) {
    top(sc)[-1] = 7;
    EXPECT_EQ(top(sc)[-1], 7);
  }
  for (auto& sc : in_use) pool.deallocate(sc);
}

TEST_F(StackPoolTest, DestructorUnmapsCachedStacks) {
  void* some_top = nullptr;
  {
    StackPool pool(64 * 1024);
    std::vector<stack_context> v;
    for (int i = 0; i < 4; ++i) v.push_back(pool.allocate());
    some_top = v[0].sp;
    for (auto& sc : v) pool.deallocate(sc);
    EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 4);
  }
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_);
  EXPECT_EQ(protection_of(static_cast<char*>(some_top) - 1), "");
}

TEST_F(StackPoolTest, GuardPageBelowEveryStackUnderTheLimit) {
  StackPool pool(64 * 1024);
  stack_context sc = pool.allocate();
  ASSERT_TRUE(guarded(pool, sc));
  char* lowest_usable = top(sc) - sc.size;
  char* guard = lowest_usable - page();
  EXPECT_EQ(protection_of(guard), "---p") << "the lowest page of the mapping is PROT_NONE";
  EXPECT_EQ(protection_of(lowest_usable), "rw-p");

  // A write to the guard page (as an overflowing fiber would do) kills the process with SIGSEGV ...
  EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(lowest_usable - 1) = 1; }));
  EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(guard) = 1; }));
  // ... while a write to the lowest usable byte is fine (the control: the child exits normally).
  int status = -1;
  EXPECT_FALSE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(lowest_usable) = 1; }, &status));
  EXPECT_EQ(status, 0);
  pool.deallocate(sc);
}

TEST_F(StackPoolTest, BeyondTheGuardLimitStacksComeUnguarded) {
  StackPool pool(64 * 1024);
  const std::size_t p = page();
  StackPool::set_guard_limit(StackPool::guarded_mapped() + 2);
  std::vector<stack_context> v;
  for (int i = 0; i < 4; ++i) v.push_back(pool.allocate());
  EXPECT_TRUE(guarded(pool, v[0]));
  EXPECT_TRUE(guarded(pool, v[1]));
  EXPECT_FALSE(guarded(pool, v[2])) << "over the limit: no guard";
  EXPECT_FALSE(guarded(pool, v[3]));
  EXPECT_EQ(v[2].size, pool.size() + p) << "an unguarded stack may use its whole mapping";
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 2);
  // The lowest page of an unguarded stack is ordinary memory: writing it does not fault.
  char* lowest = top(v[2]) - v[2].size;
  EXPECT_EQ(protection_of(lowest), "rw-p");
  *reinterpret_cast<volatile char*>(lowest) = 1;
  int status = -1;
  EXPECT_FALSE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(lowest) = 2; }, &status));
  EXPECT_EQ(status, 0);

  // Freeing a guarded stack makes room under the limit again.
  pool.deallocate(v[0]);
  pool.trim(0);
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 1);
  stack_context again = pool.allocate();
  EXPECT_TRUE(guarded(pool, again));
  // Raising the limit brings guards back for new stacks.
  StackPool::set_guard_limit(kDefaultGuardLimit);
  stack_context raised = pool.allocate();
  EXPECT_TRUE(guarded(pool, raised));
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 3);

  for (auto* sc : {&v[1], &v[2], &v[3], &again, &raised}) pool.deallocate(*sc);
  pool.trim(0);
  EXPECT_EQ(pool.mapped(), 0u);
  // Unmapping unguarded stacks does not touch the guarded count (the fixture checks the baseline).
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_);
}

TEST_F(StackPoolTest, GuardedAccountingAcrossPoolsReturnsToBaseline) {
  auto a = std::make_unique<StackPool>(64 * 1024);
  auto b = std::make_unique<StackPool>(128 * 1024);
  std::vector<stack_context> va, vb;
  for (int i = 0; i < 3; ++i) va.push_back(a->allocate());
  for (int i = 0; i < 4; ++i) vb.push_back(b->allocate());
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 7);
  for (auto& sc : va) a->deallocate(sc);
  a.reset();
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 4);
  for (auto& sc : vb) b->deallocate(sc);
  b->trim(1);
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + 1);
  b.reset();
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_);
}

TEST_F(StackPoolTest, SchedulerReturnsEveryStack) {
  {
    SchedulerOptions o;
    o.workers = 2;
    o.stack_size = 64 * 1024;
    ExecutionRef gate = Execution::create("gate");
    o.run = [&](Execution& ex) {
      gate->wait_until(safety_deadline());
      ex.finish(State::succeeded);
    };
    Scheduler s(std::move(o));
    std::vector<ExecutionRef> all;
    for (int i = 0; i < 100; ++i) {
      all.push_back(Execution::create("x"));
      s.submit(all.back());
    }
    // 100 suspended fibers: 100 stacks mapped (all guarded, far below the limit).
    ASSERT_TRUE(eventually([&] { return StackPool::guarded_mapped() == guarded_baseline_ + 100; }));
    gate->finish(State::succeeded);
    ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
    s.close(false);
    s.join();
  }
  // Joined and destroyed: every stack was returned to its pool and unmapped.
}

// A fiber that overflows its stack dies on the guard page (a clean SIGSEGV), end to end.
int deep(int n) {
  volatile char frame[512];
  frame[0] = static_cast<char>(n);
  if (n == 0) return frame[0];
  return deep(n - 1) + frame[0];
}

TEST_F(StackPoolTest, FiberStackOverflowIsACleanCrash) {
  // In the child only: a scheduler whose one body recurses far beyond its 64 KiB stack.
  const bool killed = dies_by_sigsegv([] {
    SchedulerOptions o;
    o.workers = 1;
    o.stack_size = 64 * 1024;
    o.run = [](Execution& ex) {
      volatile int r = deep(1 << 20);  // ~512 MiB of frames: hits the guard after ~128 of them
      (void)r;
      ex.finish(State::succeeded);
    };
    Scheduler s(std::move(o));
    ExecutionRef ex = Execution::create("overflow");
    s.submit(ex);
    ex->wait_until(safety_deadline());
    ::_exit(3);  // not reached
  });
  EXPECT_TRUE(killed);
}

// ---- concurrency (TSan-safe: plain threads, no fibers) ----------------------------------------------

class StackPoolThreads : public StackPoolTest {};

TEST_F(StackPoolThreads, GuardLimitIsExactUnderConcurrentAllocation) {
  constexpr int kThreads = 4, kPerThread = 10;
  constexpr std::size_t kGuards = 15;
  StackPool::set_guard_limit(StackPool::guarded_mapped() + kGuards);
  std::atomic<std::size_t> guarded_seen{0};
  std::atomic<int> finished_allocating{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      StackPool pool(64 * 1024);  // pools are per worker thread
      std::vector<stack_context> v;
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kPerThread; ++i) {
        v.push_back(pool.allocate());
        if (guarded(pool, v.back())) guarded_seen.fetch_add(1);
      }
      // Keep every stack mapped until all threads allocated theirs (the pool caches, not unmaps).
      finished_allocating.fetch_add(1);
      while (finished_allocating.load() < kThreads) std::this_thread::yield();
      for (auto& sc : v) pool.deallocate(sc);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(guarded_seen.load(), kGuards) << "exactly `limit` guarded stacks, never more";
}

}  // namespace
}  // namespace distaff::test

#if defined(__SANITIZE_ADDRESS__)
// ASan options note (the whole binary; ASAN_OPTIONS in the environment still override).
//   allow_user_segv_handler=1: the guard-page tests fork a child that sets SIGSEGV back to SIG_DFL
//     so the fault kills it with SIGSEGV (what the tests assert); without this flag ASan keeps its
//     own SIGSEGV handler, which reports and exits with status 1 instead. Nothing else in the
//     binary installs a SIGSEGV handler, so ASan's reports are unchanged everywhere else.
// No suppressions file is needed (no tests/cpp/asan.supp): the fiber engine runs clean under
// ASan+UBSan. Two things to know about Boost.Context 1.74 (not built with ASan annotations):
//   - Any C++ exception thrown on a fiber stack (DeadlockError in the ExecutionFibers tests, the
//     throwing run() in SchedulerTest) prints once per process "WARNING: ASan is ignoring requested
//     __asan_handle_no_return ... False positive error reports may follow": ASan does not know the
//     fiber's stack bounds, so it cannot unpoison the frames the exception skipped. None followed;
//     a future false stack-buffer-overflow on a reused (pooled) fiber stack would come from here.
//   - detect_stack_use_after_return must stay off (GCC's default): its fake stacks assume one stack
//     per thread.
extern "C" const char* __asan_default_options() { return "allow_user_segv_handler=1"; }
#endif
