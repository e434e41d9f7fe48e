// StackPool: the fiber stacks' own mmap allocator (chunks, static and dynamic guard pages, caching,
// the guard limit), and the fatal-signal report for a fiber that overflows.
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

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
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

// top: the highest usable byte + 1 (Boost's sp); the slot ends kTopBytes higher (the scratch area,
// then the SlotInfo).
char* top(const stack_context& sc) { return static_cast<char*>(sc.sp); }
char* slot_end(const stack_context& sc) { return top(sc) + StackPool::kTopBytes; }
const detail::SlotInfo* info(const stack_context& sc) { return StackPool::slot_of(top(sc) - 256); }
bool static_guard(const stack_context& sc) { return info(sc)->static_guard != 0; }
char* guard_of(const stack_context& sc) { return info(sc)->guard; }

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
// `stderr_out` receives what the child wrote to fd 2.
bool dies_by_sigsegv(const std::function<void()>& fn, int* exit_status = nullptr, std::string* stderr_out = nullptr) {
  std::fflush(nullptr);
  int fds[2];
  if (::pipe(fds) != 0) {
    ADD_FAILURE() << "pipe failed";
    return false;
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 2);
    struct rlimit no_core {0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    // Under ASan this needs allow_user_segv_handler=1 (see __asan_default_options below). A
    // Scheduler started by fn puts distaff's reporting handler in front of the default action.
    ::signal(SIGSEGV, SIG_DFL);
    fn();
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string err;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) err.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  if (stderr_out) *stderr_out = err;
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) {
    ADD_FAILURE() << "fork/waitpid failed";
    return false;
  }
  if (exit_status) *exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

// map_entries: lines of /proc/self/maps overlapping [lo, hi).
int map_entries(const void* lo_addr, const void* hi_addr) {
  const auto lo = reinterpret_cast<std::uintptr_t>(lo_addr), hi = reinterpret_cast<std::uintptr_t>(hi_addr);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    std::uintptr_t a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &a, &b) == 2 && a < hi && lo < b) ++n;
  }
  return n;
}

class StackPoolTest : public CoreTest {
 protected:
  void SetUp() override {
    CoreTest::SetUp();
    if (IsSkipped()) return;
    StackPool::set_guard_limit(kDefaultGuardLimit);
    // The tests below check the PROT_NONE scheme through /proc/self/maps; guard markers (the
    // default where the kernel has them) are invisible there: GuardMarkers* turn them back on.
    markers_default_ = StackPool::guard_markers();
    StackPool::set_guard_markers(false);
    guarded_baseline_ = StackPool::guarded_mapped();
  }
  void TearDown() override {
    if (!IsSkipped()) {
      StackPool::set_guard_limit(kDefaultGuardLimit);
      StackPool::set_guard_markers(markers_default_);
      EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_) << "guarded stacks leaked or double-counted";
    }
    CoreTest::TearDown();
  }
  std::size_t guarded_baseline_ = 0;
  bool markers_default_ = true;
};

// Slots of 64 KiB + a guard page: 64 of them fit in one chunk.
constexpr std::size_t kSmall = 64 * 1024;
constexpr std::size_t kChunk = 64;

TEST_F(StackPoolTest, SizeIsPageRoundedAndClamped) {
  const std::size_t p = page();
  EXPECT_EQ(StackPool(kSmall + 1).size(), kSmall + p);
  EXPECT_EQ(StackPool(256 * 1024).size(), 256 * 1024u);
  EXPECT_EQ(StackPool(1).size(), StackPool::kMinSize) << "at least 64 KiB";
  EXPECT_EQ(StackPool(~std::size_t(0)).size(), StackPool::kMaxSize) << "no overflow in the rounding";
  StackPool pool(kSmall);
  EXPECT_EQ(pool.mapped(), 0u) << "nothing is mapped before the first allocate()";
  EXPECT_EQ(pool.cached(), 0u);
}

TEST_F(StackPoolTest, AllocateDeallocateReuse) {
  StackPool pool(kSmall);
  stack_context a = pool.allocate();
  EXPECT_EQ(pool.mapped(), kChunk) << "a chunk of slots is mapped at once";
  EXPECT_EQ(pool.cached(), kChunk - 1);
  ASSERT_NE(info(a), nullptr);
  EXPECT_TRUE(static_guard(a));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(slot_end(a)) % page(), 0u) << "the slot ends on a page boundary";
  EXPECT_EQ(a.size, pool.size() - StackPool::kTopBytes);
  // The scratch area: between the sp and the SlotInfo, in the slot's top page, never page aligned
  // (a stray munmap of it fails instead of unmapping part of the stack), and writable.
  char* scratch = static_cast<char*>(StackPool::scratch_of(info(a)));
  EXPECT_EQ(scratch, top(a));
  EXPECT_EQ(scratch + StackPool::kScratchBytes, reinterpret_cast<const char*>(info(a)));
  EXPECT_EQ((reinterpret_cast<std::uintptr_t>(scratch) - 1) / page(),
            (reinterpret_cast<std::uintptr_t>(slot_end(a)) - 1) / page());
  EXPECT_NE(reinterpret_cast<std::uintptr_t>(scratch) % page(), 0u);
  EXPECT_EQ(::munmap(scratch, StackPool::kScratchBytes), -1);
  std::fill(scratch, scratch + StackPool::kScratchBytes, char(0x5a));
  EXPECT_EQ(info(a)->guard, guard_of(a)) << "filling the scratch area leaves the SlotInfo intact";
  EXPECT_EQ(StackPool::slot_of(scratch), nullptr) << "the scratch area is not stack";
  EXPECT_EQ(guard_of(a), slot_end(a) - pool.size() - page());
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + kChunk);
  // The whole usable range is writable (only touched pages cost memory).
  top(a)[-1] = 1;
  top(a)[-static_cast<std::ptrdiff_t>(a.size)] = 2;
  EXPECT_EQ(protection_of(top(a) - a.size), "rw-p");

  pool.deallocate(a);
  EXPECT_EQ(pool.cached(), kChunk);
  stack_context b = pool.allocate();
  EXPECT_EQ(b.sp, a.sp) << "the last stack returned is the next handed out";
  EXPECT_EQ(b.size, a.size);

  std::vector<stack_context> more;
  for (std::size_t i = 0; i < kChunk + 9; ++i) more.push_back(pool.allocate());
  EXPECT_EQ(pool.mapped(), 2 * kChunk);
  std::set<void*> tops{b.sp};
  for (auto& sc : more) tops.insert(sc.sp);
  EXPECT_EQ(tops.size(), kChunk + 10) << "live stacks never share memory";
  for (auto& sc : more) pool.deallocate(sc);
  pool.deallocate(b);
  EXPECT_EQ(pool.cached(), 2 * kChunk);
}

TEST_F(StackPoolTest, ChunkCostsTwoMapEntriesPerStaticGuardAndOneWithout) {
  StackPool pool(kSmall);
  std::vector<stack_context> v;
  for (std::size_t i = 0; i < kChunk; ++i) v.push_back(pool.allocate());
  char* lo = guard_of(v[0]);
  char* hi = slot_end(v[0]);
  for (auto& sc : v) {
    lo = std::min(lo, guard_of(sc));
    hi = std::max(hi, slot_end(sc));
  }
  EXPECT_EQ(static_cast<std::size_t>(hi - lo), kChunk * (pool.size() + page())) << "one contiguous chunk";
  // Guard and stack alternate (an end may merge with a neighbouring mapping of the same kind).
  EXPECT_GE(map_entries(lo, hi), 2 * static_cast<int>(kChunk) - 1);
  EXPECT_LE(map_entries(lo, hi), 2 * static_cast<int>(kChunk));
  for (auto& sc : v) pool.deallocate(sc);

  StackPool::set_guard_limit(0);  // beyond the limit: dynamic guards only
  StackPool unguarded(kSmall);
  std::vector<stack_context> u;
  for (std::size_t i = 0; i < kChunk; ++i) u.push_back(unguarded.allocate());
  char* ulo = guard_of(u[0]);
  char* uhi = slot_end(u[0]);
  for (auto& sc : u) {
    EXPECT_FALSE(static_guard(sc));
    ulo = std::min(ulo, guard_of(sc));
    uhi = std::max(uhi, slot_end(sc));
  }
  EXPECT_EQ(map_entries(ulo, uhi), 1) << "the whole chunk is one entry";
  for (auto& sc : u) unguarded.deallocate(sc);
}

TEST_F(StackPoolTest, TrimUnmapsOnlyCachedStacks) {
  StackPool pool(kSmall);
  std::vector<stack_context> in_use, spare;
  for (int i = 0; i < 2; ++i) in_use.push_back(pool.allocate());
  for (int i = 0; i < 5; ++i) spare.push_back(pool.allocate());
  for (auto& sc : spare) pool.deallocate(sc);
  EXPECT_EQ(pool.mapped(), kChunk);
  EXPECT_EQ(pool.cached(), kChunk - 2);

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
    StackPool pool(kSmall);
    std::vector<stack_context> v;
    for (int i = 0; i < 4; ++i) v.push_back(pool.allocate());
    some_top = v[0].sp;
    for (auto& sc : v) pool.deallocate(sc);
    EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_ + kChunk);
  }
  EXPECT_EQ(StackPool::guarded_mapped(), guarded_baseline_);
  EXPECT_EQ(protection_of(static_cast<char*>(some_top) - 1), "");
}

TEST_F(StackPoolTest, ReleaseMemoryKeepsOnlyTheTopPagesOfCachedStacks) {
  StackPool pool(256 * 1024);
  stack_context a = pool.allocate();
  // Touch the whole stack, as a deep recursion would.
  for (char* q = top(a) - a.size; q < top(a); q += page()) *reinterpret_cast<volatile char*>(q) = 1;
  top(a)[-1] = 42;
  top(a)[-static_cast<std::ptrdiff_t>(a.size)] = 43;
  EXPECT_TRUE(pool.used_since_release());
  pool.deallocate(a);
  EXPECT_EQ(pool.release_memory(64 * 1024), pool.cached());
  EXPECT_FALSE(pool.used_since_release());
  EXPECT_EQ(top(a)[-1], 42) << "the top 64 KiB are kept";
  EXPECT_EQ(top(a)[-static_cast<std::ptrdiff_t>(a.size)], 0) << "the rest reads back as fresh zero pages";
}

TEST_F(StackPoolTest, StaticGuardPageBelowEveryStackUnderTheLimit) {
  StackPool pool(kSmall);
  stack_context sc = pool.allocate();
  ASSERT_TRUE(static_guard(sc));
  char* lowest_usable = top(sc) - sc.size;
  char* guard = lowest_usable - page();
  EXPECT_EQ(guard, guard_of(sc));
  EXPECT_EQ(protection_of(guard), "---p") << "the lowest page of the slot is PROT_NONE";
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

TEST_F(StackPoolTest, GuardMarkersFaultLikeProtNoneAndKeepTheChunkOneMapping) {
  // Where the kernel has guard markers (Linux 6.13+), static guards are markers: a write to the
  // guard page still kills with SIGSEGV, the lowest usable byte is still writable, and the chunk
  // stays one entry of /proc/self/maps (no split per guard). On an older kernel the first install
  // fails with EINVAL and the pool falls back to PROT_NONE (the tests above).
  StackPool::set_guard_markers(true);
  StackPool pool(kSmall);
  std::vector<stack_context> v;
  for (std::size_t i = 0; i < kChunk; ++i) v.push_back(pool.allocate());
  if (!StackPool::guard_markers()) {
    for (auto& sc : v) pool.deallocate(sc);
    GTEST_SKIP() << "this kernel has no MADV_GUARD_INSTALL: PROT_NONE guards (tested above)";
  }
  char* lo = guard_of(v[0]);
  char* hi = slot_end(v[0]);
  for (auto& sc : v) {
    EXPECT_TRUE(static_guard(sc));
    lo = std::min(lo, guard_of(sc));
    hi = std::max(hi, slot_end(sc));
  }
  EXPECT_EQ(map_entries(lo, hi), 1) << "guard markers do not split the chunk";
  for (auto* sc : {&v.front(), &v[kChunk / 2], &v.back()}) {
    char* lowest_usable = top(*sc) - sc->size;
    EXPECT_EQ(lowest_usable - page(), guard_of(*sc));
    EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(lowest_usable - 1) = 1; }));
    EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(guard_of(*sc)) = 1; }));
    int status = -1;
    EXPECT_FALSE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(lowest_usable) = 1; }, &status));
    EXPECT_EQ(status, 0);
  }
  // A cached stack given back with release_memory keeps its guard (MADV_DONTNEED leaves markers).
  for (auto& sc : v) pool.deallocate(sc);
  EXPECT_EQ(pool.release_memory(16 * 1024), pool.cached());
  stack_context again = pool.allocate();
  EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(guard_of(again)) = 1; }));
  pool.deallocate(again);
}

TEST_F(StackPoolTest, BeyondTheGuardLimitGuardsAreArmedWhileAFiberRuns) {
  StackPool::set_guard_limit(StackPool::guarded_mapped() + 2);
  StackPool pool(kSmall);
  std::vector<stack_context> v;
  for (std::size_t i = 0; i < kChunk; ++i) v.push_back(pool.allocate());
  std::size_t statics = 0;
  for (auto& sc : v) statics += static_guard(sc) ? 1 : 0;
  EXPECT_EQ(statics, 2u) << "exactly `limit` static guards";
  EXPECT_EQ(pool.dynamic_mapped(), kChunk - 2);
  EXPECT_TRUE(pool.has_dynamic());
  std::vector<stack_context*> dyn;
  for (auto& sc : v) {
    if (!static_guard(sc)) dyn.push_back(&sc);
  }
  // Unarmed, the guard page is ordinary memory.
  stack_context& d0 = *dyn[0];
  EXPECT_EQ(protection_of(guard_of(d0)), "rw-p");
  // arm() with the address of a fiber context (Boost puts it just below sp): the guard is PROT_NONE.
  pool.arm(top(d0) - 200);
  EXPECT_EQ(protection_of(guard_of(d0)), "---p");
  EXPECT_EQ(pool.armed(), 1u);
  EXPECT_EQ(pool.arms(), 1u);
  pool.arm(top(d0) - 100);  // already armed: no system call
  EXPECT_EQ(pool.arms(), 1u);
  EXPECT_TRUE(dies_by_sigsegv([&] { *reinterpret_cast<volatile char*>(top(d0) - d0.size - 1) = 1; }));
  // Static slots are never touched by arm().
  for (auto& sc : v) {
    if (static_guard(sc)) pool.arm(top(sc) - 200);
  }
  EXPECT_EQ(pool.armed(), 1u);
  // The LRU holds kArmed guards; arming one more lifts the oldest (d0).
  for (std::size_t i = 1; i <= StackPool::kArmed; ++i) pool.arm(top(*dyn[i]) - 200);
  EXPECT_EQ(pool.armed(), StackPool::kArmed);
  EXPECT_EQ(protection_of(guard_of(d0)), "rw-p") << "the least recently armed guard was lifted";
  EXPECT_EQ(protection_of(guard_of(*dyn[StackPool::kArmed])), "---p");
  // Mapping entries stay bounded: one chunk, two more per armed guard.
  char* lo = guard_of(v[0]);
  char* hi = slot_end(v[0]);
  for (auto& sc : v) {
    lo = std::min(lo, guard_of(sc));
    hi = std::max(hi, slot_end(sc));
  }
  EXPECT_LE(map_entries(lo, hi), static_cast<int>(1 + 2 * statics + 2 * StackPool::kArmed));
  // Unmapping an armed slot forgets its guard (the address may be reused by anything).
  for (auto& sc : v) pool.deallocate(sc);
  pool.trim(0);
  EXPECT_EQ(pool.armed(), 0u);
  EXPECT_EQ(pool.mapped(), 0u);
  EXPECT_FALSE(pool.has_dynamic());
}

TEST_F(StackPoolTest, SchedulerReturnsEveryStack) {
  {
    SchedulerOptions o;
    o.workers = 2;
    o.stack_size = kSmall;
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
    // 100 suspended fibers: at least 100 guarded slots mapped (far below the limit).
    ASSERT_TRUE(eventually([&] { return s.stats().fibers == 100; }));
    EXPECT_GE(StackPool::guarded_mapped(), guarded_baseline_ + 100);
    gate->finish(State::succeeded);
    ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
    s.close(false);
    s.join();
  }
  // Joined and destroyed: every stack was returned to its pool and unmapped (the fixture checks).
}

TEST_F(StackPoolTest, EachFiberHasItsOwnScratchAreaAtTheTopOfItsStack) {
  // fiber_scratch(): the running worker fiber's kFiberScratchBytes, just above its C stack (in the
  // page it touches first), distinct per fiber and kept while the fiber is suspended; nullptr on
  // any thread that is not running a worker fiber.
  EXPECT_EQ(fiber_scratch(), nullptr);
  constexpr int kFibers = 50;
  std::mutex mu;
  std::set<void*> seen;
  std::atomic<int> bad{0};
  {
    SchedulerOptions o;
    o.workers = 2;
    o.stack_size = kSmall;
    ExecutionRef gate = Execution::create("gate");
    o.run = [&](Execution& ex) {
      auto* scratch = static_cast<unsigned char*>(fiber_scratch());
      int local = 0;
      const auto here = reinterpret_cast<std::uintptr_t>(&local);
      const auto lo = reinterpret_cast<std::uintptr_t>(scratch);
      // Just above this fiber's stack: a local is below it, within the same few KiB.
      if (scratch == nullptr || here >= lo || lo - here > 16 * 1024) ++bad;
      if (scratch != nullptr) {
        const auto mark = static_cast<unsigned char>(ex.id());
        std::fill(scratch, scratch + kFiberScratchBytes, mark);
        {
          std::lock_guard<std::mutex> lock(mu);
          seen.insert(scratch);
        }
        gate->wait_until(safety_deadline());  // suspended: other fibers run meanwhile
        for (std::size_t i = 0; i < kFiberScratchBytes; ++i) {
          if (scratch[i] != mark) {
            ++bad;
            break;
          }
        }
      }
      ex.finish(State::succeeded);
    };
    Scheduler s(std::move(o));
    for (int i = 0; i < kFibers; ++i) s.submit(Execution::create("x"));
    ASSERT_TRUE(eventually([&] { return s.stats().fibers == kFibers; }));
    gate->finish(State::succeeded);
    ASSERT_TRUE(s.wait_idle_until(safety_deadline()));
    s.close(false);
    s.join();
  }
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(seen.size(), std::size_t(kFibers)) << "each live fiber has its own area";
}

TEST_F(StackPoolTest, SchedulerRejectsStackSizesOutOfRange) {
  for (std::size_t bad : {std::size_t(0), StackPool::kMinSize - 1, StackPool::kMaxSize + 1, ~std::size_t(0)}) {
    SchedulerOptions o;
    o.stack_size = bad;
    o.run = [](Execution& ex) { ex.finish(State::succeeded); };
    EXPECT_THROW(Scheduler s(std::move(o)), std::invalid_argument) << bad;
  }
}

// A fiber that overflows its stack dies on the guard page with a report naming it, end to end.
int deep(int n) {
  volatile char frame[512];
  frame[0] = static_cast<char>(n);
  if (n == 0) return frame[0];
  return deep(n - 1) + frame[0];
}

void overflow_in_a_fiber(bool dynamic_guards) {
  if (dynamic_guards) StackPool::set_guard_limit(0);
  SchedulerOptions o;
  o.workers = 1;
  o.stack_size = kSmall;
  ExecutionRef gate = Execution::create("gate");
  o.run = [&](Execution& ex) {
    if (ex.name() == "overflow") {
      volatile int r = deep(1 << 20);  // ~512 MiB of frames: hits the guard after ~128 of them
      (void)r;
    } else {
      gate->wait_until(safety_deadline());  // neighbours: suspended fibers in the same chunk
    }
    ex.finish(State::succeeded);
  };
  Scheduler s(std::move(o));
  std::vector<ExecutionRef> sleepers;
  for (int i = 0; i < 20; ++i) {
    sleepers.push_back(Execution::create("sleeper"));
    s.submit(sleepers.back());
  }
  ExecutionRef ex = Execution::create("overflow");
  s.submit(ex);
  ex->wait_until(safety_deadline());
  ::_exit(3);  // not reached
}

TEST_F(StackPoolTest, FiberStackOverflowIsACleanCrashNamingTheExecution) {
  std::string err;
  EXPECT_TRUE(dies_by_sigsegv([] { overflow_in_a_fiber(false); }, nullptr, &err));
  EXPECT_NE(err.find("distaff: fatal: stack overflow in execution "), std::string::npos) << err;
  EXPECT_NE(err.find("'overflow' (fiber stack of 64 KiB"), std::string::npos) << err;
}

TEST_F(StackPoolTest, FiberStackOverflowBeyondTheGuardLimitIsACleanCrashToo) {
  // No static guards at all: 21 stacks in one chunk, the overflowing one between suspended ones.
  std::string err;
  EXPECT_TRUE(dies_by_sigsegv([] { overflow_in_a_fiber(true); }, nullptr, &err));
  EXPECT_NE(err.find("stack overflow in execution "), std::string::npos) << err;
  EXPECT_NE(err.find("'overflow'"), std::string::npos) << err;
}

TEST_F(StackPoolTest, OtherFaultsInABodyNameTheExecution) {
  std::string err;
  EXPECT_TRUE(dies_by_sigsegv(
      [] {
        SchedulerOptions o;
        o.run = [](Execution& ex) {
          static volatile std::uintptr_t addr = 8;
          *reinterpret_cast<volatile int*>(addr) = 1;  // a null-pointer write
          ex.finish(State::succeeded);
        };
        Scheduler s(std::move(o));
        ExecutionRef ex = Execution::create("null write");
        s.submit(ex);
        ex->wait_until(safety_deadline());
        ::_exit(3);
      },
      nullptr, &err));
  EXPECT_NE(err.find("distaff: fatal: signal 11 (SIGSEGV) in execution "), std::string::npos) << err;
  EXPECT_NE(err.find("'null write'"), std::string::npos) << err;
}

TEST_F(StackPoolTest, AStackThatCannotBeMappedFailsTheExecutionNotTheProcess) {
  // In a child: cap the address space so a 1 GiB stack cannot be mapped.
  int status = -1;
  const bool killed = dies_by_sigsegv(
      [] {
        SchedulerOptions o;
        o.stack_size = StackPool::kMaxSize;
        std::atomic<int> failed_hook{0};
        o.run = [](Execution& ex) { ex.finish(State::succeeded); };
        o.start_failed = [&](Execution& ex) {
          failed_hook.fetch_add(1);
          ex.finish(State::failed);
        };
        Scheduler s(std::move(o));
        struct rlimit as {std::size_t(512) << 20, std::size_t(512) << 20};
        std::ifstream status_file("/proc/self/status");
        std::string line;
        while (std::getline(status_file, line)) {
          if (line.rfind("VmSize:", 0) == 0) as.rlim_cur = as.rlim_max = (std::stoull(line.substr(7)) << 10) + (std::size_t(256) << 20);
        }
        ::setrlimit(RLIMIT_AS, &as);
        ExecutionRef a = Execution::create("a"), b = Execution::create("b");
        s.submit(a);
        s.submit(b);
        if (!s.wait_idle_until(safety_deadline())) ::_exit(10);
        if (a->state() != State::failed || b->state() != State::failed) ::_exit(11);
        if (failed_hook.load() != 2) ::_exit(12);
        if (s.stats().fibers != 0) ::_exit(13);
        s.close(false);
        s.join();
        ::_exit(0);
      },
      &status);
  EXPECT_FALSE(killed);
  EXPECT_EQ(status, 0);
}

// ---- concurrency (TSan-safe: plain threads, no fibers) ----------------------------------------------

class StackPoolThreads : public StackPoolTest {};

TEST_F(StackPoolThreads, GuardLimitIsExactUnderConcurrentAllocation) {
  constexpr int kThreads = 4, kPerThread = 10;
  constexpr std::size_t kGuards = 15;
  StackPool::set_guard_limit(StackPool::guarded_mapped() + kGuards);
  const std::size_t base = StackPool::guarded_mapped();
  std::atomic<int> finished_allocating{0};
  std::atomic<bool> go{false};
  std::atomic<std::size_t> seen_at_peak{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      StackPool pool(kSmall);  // pools are per worker thread
      std::vector<stack_context> v;
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kPerThread; ++i) v.push_back(pool.allocate());
      // Keep every stack mapped until all threads allocated theirs (the pool caches, not unmaps).
      if (finished_allocating.fetch_add(1) + 1 == kThreads) seen_at_peak = StackPool::guarded_mapped() - base;
      while (finished_allocating.load() < kThreads) std::this_thread::yield();
      for (auto& sc : v) pool.deallocate(sc);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(seen_at_peak.load(), kGuards) << "exactly `limit` static guards, never more";
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
