#include "detail/stack_allocator.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <new>

namespace distaff::detail {

namespace {
std::atomic<std::size_t> g_guarded{0};
std::atomic<std::size_t> g_guard_limit{20000};

std::size_t page_size() noexcept {
  static const std::size_t p = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}
}  // namespace

StackPool::StackPool(std::size_t size) noexcept {
  const std::size_t p = page_size();
  size_ = (size + p - 1) / p * p;
  if (size_ < 16 * p) size_ = 16 * p;
}

StackPool::~StackPool() { trim(0); }

void StackPool::set_guard_limit(std::size_t limit) noexcept { g_guard_limit.store(limit); }
std::size_t StackPool::guarded_mapped() noexcept { return g_guarded.load(); }

boost::context::stack_context StackPool::allocate() {
  if (!free_.empty()) {
    boost::context::stack_context sc = free_.back();
    free_.pop_back();
    return sc;
  }
  const std::size_t p = page_size();
  const std::size_t total = size_ + p;
  if (g_guarded.load(std::memory_order_relaxed) >= g_guard_limit.load(std::memory_order_relaxed)) {
    // Unguarded stacks are mapped kChunk at a time, in one mapping: the kernel counts it as one
    // entry against vm.max_map_count however it is later unmapped piecewise. Mapped one by one,
    // they interleave with CPython's own small mappings (each fiber's thread state maps its frame
    // stack) and never merge: two entries per fiber, and mmap failed near 21,000 suspended fibers.
    constexpr std::size_t kChunk = 64;
    void* chunk = ::mmap(nullptr, total * kChunk, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (chunk != MAP_FAILED) {
      for (std::size_t i = 1; i < kChunk; ++i) {
        boost::context::stack_context extra;
        extra.size = total;
        extra.sp = static_cast<char*>(chunk) + total * (i + 1);
        free_.push_back(extra);
      }
      mapped_ += kChunk;
      boost::context::stack_context sc;
      sc.size = total;
      sc.sp = static_cast<char*>(chunk) + total;
      return sc;
    }
  }
  void* base = ::mmap(nullptr, total, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  // The stack's usable size tells deallocate() whether the lowest page is a guard.
  std::size_t usable = total;
  if (g_guarded.fetch_add(1) < g_guard_limit.load() && ::mprotect(base, p, PROT_NONE) == 0) {
    usable = size_;
  } else {
    g_guarded.fetch_sub(1);
  }
  boost::context::stack_context sc;
  sc.size = usable;
  sc.sp = static_cast<char*>(base) + total;
  ++mapped_;
  return sc;
}

void StackPool::deallocate(boost::context::stack_context& sc) noexcept { free_.push_back(sc); }

void StackPool::unmap(boost::context::stack_context& sc, std::size_t size) noexcept {
  const std::size_t p = page_size();
  const std::size_t total = size + p;
  void* base = static_cast<char*>(sc.sp) - total;
  if (sc.size == size) g_guarded.fetch_sub(1);
  ::munmap(base, total);
}

void StackPool::trim(std::size_t keep) noexcept {
  while (free_.size() > keep) {
    unmap(free_.back(), size_);
    free_.pop_back();
    --mapped_;
  }
}

}  // namespace distaff::detail
