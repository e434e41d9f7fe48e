#pragma once
// StackPool: fiber stacks from our own mmap allocator, cached per worker.
//
// Why not Boost's allocators: protected_fixedsize_stack asserts when vm.max_map_count is reached and
// silently drops the guard page in release builds; fixedsize_stack mallocs the whole stack (RSS for
// untouched pages on some allocators) and pooled_fixedsize_stack never returns memory. Measured in
// the spike: mmap+munmap per fiber costs 65–116 µs, a cached stack nothing measurable.
//
// Each stack is one mapping of `size + page` bytes with MAP_NORESERVE, so only touched pages cost
// memory (~8 KiB for a fiber suspended inside a Python call). While fewer than `guard_limit` guarded
// stacks are mapped process-wide, the lowest page is PROT_NONE (an overflow is a clean SIGSEGV, not
// silent corruption). A guard costs extra kernel mappings; at the default vm.max_map_count (65,530)
// guarded fibers stop near 21,800, so above the limit stacks come unguarded and Python's recursion
// caps are what stands between a runaway recursion and the next stack (docs/limits.md).

#include <cstddef>
#include <vector>

#include <boost/context/stack_context.hpp>

namespace distaff::detail {

class StackPool {
 public:
  explicit StackPool(std::size_t size) noexcept;
  ~StackPool();
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  // allocate: a cached stack, or a new mapping. Throws std::bad_alloc when mmap fails.
  boost::context::stack_context allocate();
  void deallocate(boost::context::stack_context& sc) noexcept;
  // trim: unmaps cached stacks beyond `keep`.
  void trim(std::size_t keep) noexcept;

  std::size_t cached() const noexcept { return free_.size(); }
  std::size_t mapped() const noexcept { return mapped_; }
  std::size_t size() const noexcept { return size_; }

  static void set_guard_limit(std::size_t limit) noexcept;
  static std::size_t guarded_mapped() noexcept;

 private:
  static void unmap(boost::context::stack_context& sc, std::size_t size) noexcept;
  std::size_t size_;
  std::size_t mapped_ = 0;
  std::vector<boost::context::stack_context> free_;
};

// PooledStack: a Boost.Context StackAllocator over one worker's pool. Worker-thread only.
struct PooledStack {
  StackPool* pool;
  boost::context::stack_context allocate() { return pool->allocate(); }
  void deallocate(boost::context::stack_context& sc) noexcept { pool->deallocate(sc); }
};

}  // namespace distaff::detail
