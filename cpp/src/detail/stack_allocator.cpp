#include "detail/stack_allocator.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>

// Linux 6.13+: a guard marker in the page table (any access faults with SIGSEGV) without changing
// the mapping's protection, so it does not split the mapping.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

namespace distaff::detail {

namespace {
std::atomic<std::size_t> g_guarded{0};
std::atomic<std::size_t> g_guard_limit{20000};
std::atomic<bool> g_warned_unguarded{false};
std::atomic<bool> g_guard_markers{true};

// A chunk maps at most this many bytes (and at most kChunkSlots slots): 63 stacks of 8 MiB.
constexpr std::size_t kChunkBytes = std::size_t(512) << 20;
constexpr std::size_t kChunkSlots = 64;
constexpr std::uintptr_t kSlotMagic = 0x64697374616666ULL;  // "distaff"

void write_stderr(const char* s) noexcept {
  std::size_t n = std::strlen(s);
  while (n > 0) {
    ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<std::size_t>(w);
  }
}
}  // namespace

std::size_t StackPool::page() noexcept {
  static const std::size_t p = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}

StackPool::StackPool(std::size_t size) noexcept {
  const std::size_t p = page();
  size = std::clamp(size, kMinSize, kMaxSize);
  size_ = (size + p - 1) / p * p;
  slot_ = size_ + p;
}

StackPool::~StackPool() { trim(0); }

void StackPool::set_guard_limit(std::size_t limit) noexcept { g_guard_limit.store(limit); }
void StackPool::set_guard_markers(bool on) noexcept { g_guard_markers.store(on); }
bool StackPool::guard_markers() noexcept { return g_guard_markers.load(); }

// install_static_guard: makes the page at `guard` fault on any access for the slot's life. With a
// guard marker where the kernel has them: mprotect(PROT_NONE) splits the chunk's mapping in three,
// and with tens of thousands of stacks each split cost ~6-20 us of kernel time (VMA tree updates;
// measured 10-22 us per slot with mprotect against 0.5-1 us with a marker, 6,400 slots of
// 8 MiB), a fifth of a worker's time when 10,000 new fibers start (W5). A kernel without markers
// answers EINVAL once; from then on mprotect.
bool StackPool::install_static_guard(char* guard) noexcept {
  const std::size_t p = page();
  if (g_guard_markers.load(std::memory_order_relaxed)) {
    if (::madvise(guard, p, MADV_GUARD_INSTALL) == 0) return true;
    if (errno == EINVAL) g_guard_markers.store(false, std::memory_order_relaxed);
  }
  return ::mprotect(guard, p, PROT_NONE) == 0;
}
std::size_t StackPool::guard_limit() noexcept { return g_guard_limit.load(); }
std::size_t StackPool::guarded_mapped() noexcept { return g_guarded.load(); }

void StackPool::map_chunk() {
  std::size_t n = std::clamp<std::size_t>(kChunkBytes / slot_, 1, kChunkSlots);
  void* chunk = ::mmap(nullptr, n * slot_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (chunk == MAP_FAILED && n > 1) {
    n = 1;
    chunk = ::mmap(nullptr, slot_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                   -1, 0);
  }
  if (chunk == MAP_FAILED) throw std::bad_alloc();
  // Transparent huge pages would turn the few touched pages at a suspended fiber's top into 2 MiB.
  (void)::madvise(chunk, n * slot_, MADV_NOHUGEPAGE);
  char* base = static_cast<char*>(chunk);
  free_.reserve(free_.size() + n);
  // Highest slot last, so it is handed out first (LIFO): consecutive fibers take adjacent slots.
  for (std::size_t i = 0; i < n; ++i) {
    char* guard = base + i * slot_;
    bool is_static = false;
    if (g_guarded.fetch_add(1) < g_guard_limit.load() && install_static_guard(guard)) {
      is_static = true;
    } else {
      g_guarded.fetch_sub(1);
      ++dynamic_live_;
    }
    free_.push_back(Free{guard + slot_, is_static});
  }
  mapped_ += n;
}

boost::context::stack_context StackPool::allocate() {
  if (free_.empty()) map_chunk();
  const Free f = free_.back();
  free_.pop_back();
  auto* info = reinterpret_cast<SlotInfo*>(f.top - kInfoBytes);
  static_assert(sizeof(SlotInfo) <= kInfoBytes);
  info->magic = kSlotMagic ^ reinterpret_cast<std::uintptr_t>(info);
  info->guard = f.top - slot_;
  info->usable = size_ - kInfoBytes;
  info->static_guard = f.static_guard ? 1 : 0;
  used_since_release_ = true;
  boost::context::stack_context sc;
  sc.sp = f.top - kTopBytes;
  sc.size = size_ - kTopBytes;
  return sc;
}

void StackPool::deallocate(boost::context::stack_context& sc) noexcept {
  char* top = static_cast<char*>(sc.sp) + kTopBytes;
  const auto* info = reinterpret_cast<const SlotInfo*>(top - kInfoBytes);
  free_.push_back(Free{top, info->static_guard != 0});
}

void StackPool::unmap_slot(const Free& f) noexcept {
  char* guard = f.top - slot_;
  if (f.static_guard) {
    g_guarded.fetch_sub(1);
  } else {
    --dynamic_live_;
    // Forget an armed guard: the address may be reused by an unrelated mapping.
    for (std::size_t i = 0; i < armed_n_; ++i) {
      if (armed_[i] == guard) {
        std::copy(armed_.begin() + i + 1, armed_.begin() + armed_n_, armed_.begin() + i);
        --armed_n_;
        break;
      }
    }
  }
  ::munmap(guard, slot_);
  --mapped_;
}

void StackPool::trim(std::size_t keep) noexcept {
  while (free_.size() > keep) {
    unmap_slot(free_.back());
    free_.pop_back();
  }
}

std::size_t StackPool::release_memory(std::size_t keep_top) noexcept {
  const std::size_t p = page();
  keep_top = (keep_top + p - 1) / p * p;
  std::size_t n = 0;
  for (const Free& f : free_) {
    char* lo = f.top - slot_ + p;  // above the guard
    char* hi = f.top - keep_top;
    if (hi > lo && ::madvise(lo, static_cast<std::size_t>(hi - lo), MADV_DONTNEED) == 0) ++n;
  }
  used_since_release_ = false;
  return n;
}

const SlotInfo* StackPool::slot_of(const void* p) noexcept {
  const std::uintptr_t pg = page();
  const std::uintptr_t top = (reinterpret_cast<std::uintptr_t>(p) / pg + 1) * pg;
  const auto* info = reinterpret_cast<const SlotInfo*>(top - kInfoBytes);
  if (reinterpret_cast<std::uintptr_t>(p) >= top - kTopBytes) return nullptr;  // not below the sp
  if (info->magic != (kSlotMagic ^ reinterpret_cast<std::uintptr_t>(info))) return nullptr;
  return info;
}

void StackPool::disarm_all() noexcept {
  const std::size_t p = page();
  for (std::size_t i = 0; i < armed_n_; ++i) ::mprotect(armed_[i], p, PROT_READ | PROT_WRITE);
  armed_n_ = 0;
}

void StackPool::arm(const void* ctx_addr) noexcept {
  const SlotInfo* info = slot_of(ctx_addr);
  if (info == nullptr || info->static_guard) return;
  char* guard = info->guard;
  for (std::size_t i = 0; i < armed_n_; ++i) {
    if (armed_[i] == guard) {  // already armed: move to the front of the LRU
      std::copy_backward(armed_.begin(), armed_.begin() + i, armed_.begin() + i + 1);
      armed_[0] = guard;
      return;
    }
  }
  const std::size_t p = page();
  if (armed_n_ == kArmed) {
    // Lifting the oldest guard merges its page back into the chunk's mapping.
    ::mprotect(armed_[--armed_n_], p, PROT_READ | PROT_WRITE);
  }
  if (::mprotect(guard, p, PROT_NONE) != 0) {
    // Out of map entries (the process holds ~vm.max_map_count mappings): free ours and retry.
    disarm_all();
    if (::mprotect(guard, p, PROT_NONE) != 0) {
      ++unguarded_runs_;
      if (!g_warned_unguarded.exchange(true)) {
        write_stderr(
            "distaff: warning: could not protect a fiber stack's guard page (the process has used up "
            "vm.max_map_count); such fibers run without overflow detection\n");
      }
      return;
    }
  }
  std::copy_backward(armed_.begin(), armed_.begin() + armed_n_, armed_.begin() + armed_n_ + 1);
  armed_[0] = guard;
  ++armed_n_;
  ++arms_;
}

}  // namespace distaff::detail
