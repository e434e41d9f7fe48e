#pragma once
// StackPool: fiber stacks from our own mmap allocator, cached per worker, never without a guard
// while they run.
//
// Why not Boost's allocators: protected_fixedsize_stack asserts when vm.max_map_count is reached and
// silently drops the guard page in release builds; fixedsize_stack mallocs the whole stack (RSS for
// untouched pages on some allocators) and pooled_fixedsize_stack never returns memory. Measured in
// the spike: mmap+munmap per fiber costs 65–116 µs, a cached stack nothing measurable.
//
// Layout. Stacks are *slots* of `size + page` bytes, mapped up to 64 (at most 512 MiB) at a time in
// one MAP_NORESERVE mapping, so only touched pages cost memory (a fiber suspended inside a Python
// call touches a few pages at the top of its slot) and the kernel counts one entry against
// vm.max_map_count for the whole chunk. Each slot, from low to high addresses:
//
//     [guard page][ usable stack, grows down ........... ][scratch (1 KiB)][SlotInfo (64 B)]
//
// The guard page is PROT_NONE whenever the slot's fiber runs, so an overflow faults at once
// (the fatal-signal handler in fatal_signal.cpp then names the execution) instead of writing into
// the top of the next slot — the live, hot part of some other fiber's stack.
//
// Guards cost mappings. A PROT_NONE page inside a chunk splits it: two more entries per guard. At
// the default vm.max_map_count (65,530) that stops near 30,000 guarded stacks, far below the
// 100,000+ suspended executions distaff must hold. So guards come in two kinds:
//   - static: set when the slot is mapped and kept for its life, while fewer than `guard_limit`
//     static guards exist process-wide (20,000 by default: 40,000 entries);
//   - dynamic: beyond the limit, or when the kernel refuses the static one (map count exhausted),
//     the guard is set by arm() when the worker picks the slot's fiber to run and lifted again
//     when it falls out of a small per-worker LRU of armed slots (kArmed). A suspended fiber cannot
//     overflow, so only running fibers need one: the entries used stay bounded per worker. A
//     switch to an unarmed slot costs two mprotect calls (~1–2 µs); below the limit nothing at all.
// If even an armed guard cannot be set (the process exhausted vm.max_map_count itself), the fiber
// runs unguarded: that is counted (unguarded_runs) and reported once on stderr, never silent.
//
// SlotInfo sits in the top 64 bytes of each slot, and below it the fiber's *scratch* area
// (kScratchBytes), both above the `sp` handed to Boost. Boost.Fiber places a fiber's context record
// just below `sp`, in the slot's top page, so from a boost::fibers::context* we find its slot
// without any lookup table (slot_of).
//
// The scratch area is the embedder's (fiber_scratch() in scheduler.hpp): the bindings put the root
// chunk of the fiber's CPython data stack there (python_fiber.cpp), so the frames of a shallow body
// share the page its C stack already touches instead of touching a page of a separately mapped
// 16 KiB chunk (docs/internals/scheduler.md, "Memory per suspended execution"). It is not page
// aligned (kTopBytes is not a multiple of the page size), so an munmap() of it always fails.

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <boost/context/stack_context.hpp>

#include "distaff/scheduler.hpp"

namespace distaff::detail {

struct SlotInfo {
  std::uintptr_t magic;      // kSlotMagic ^ address of this SlotInfo: tells a slot from anything else
  char* guard;               // the slot's lowest page
  std::size_t usable;        // bytes between the guard and this SlotInfo
  std::uint32_t static_guard;  // 1: the guard is PROT_NONE for the slot's life
  std::uint32_t pad_;
};

class StackPool {
 public:
  // Smallest and largest stack size the pool accepts (the bindings validate the user's value
  // against the same bounds).
  static constexpr std::size_t kMinSize = kStackSizeMin;
  static constexpr std::size_t kMaxSize = kStackSizeMax;
  // Bytes at the top of each slot reserved for its SlotInfo.
  static constexpr std::size_t kInfoBytes = 64;
  // Bytes below the SlotInfo reserved for the running fiber's embedder (scratch_of), 16-aligned.
  static constexpr std::size_t kScratchBytes = kFiberScratchBytes;
  // Bytes at the top of each slot above Boost's `sp`: the scratch area and the SlotInfo. The context
  // record Boost puts below `sp` must stay in the top page (slot_of), so this is well under a page.
  static constexpr std::size_t kTopBytes = kInfoBytes + kScratchBytes;
  static_assert(kScratchBytes % 16 == 0 && kTopBytes <= 3072 && kTopBytes % 4096 != 0);
  // Armed dynamic guards a worker keeps (LRU): fibers switching among at most this many
  // unguarded slots pay no mprotect after the first switch.
  static constexpr std::size_t kArmed = 8;

  // size: usable bytes per stack, rounded up to pages, clamped to [kMinSize, kMaxSize].
  explicit StackPool(std::size_t size) noexcept;
  ~StackPool();
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  // allocate: a cached stack, or one from a new chunk. Throws std::bad_alloc when no memory can be
  // mapped (the scheduler turns that into a failed execution, never a crash).
  boost::context::stack_context allocate();
  void deallocate(boost::context::stack_context& sc) noexcept;
  // trim: unmaps cached stacks beyond `keep`.
  void trim(std::size_t keep) noexcept;
  // release_memory: gives back the memory of every cached stack except its top `keep_top` bytes
  // (MADV_DONTNEED): a body that once recursed deep does not keep megabytes committed in the cache.
  // Returns how many stacks it advised.
  std::size_t release_memory(std::size_t keep_top = 64 * 1024) noexcept;
  // used_since_release: a stack was handed out since the last release_memory().
  bool used_since_release() const noexcept { return used_since_release_; }

  // arm: `ctx_addr` is the address of the fiber context about to run (Boost places it in the top
  // page of its stack). If it lives in one of this pool's slots without a static guard, make sure
  // that slot's guard page is PROT_NONE. Worker thread only; cheap no-op while has_dynamic() is false.
  void arm(const void* ctx_addr) noexcept;
  bool has_dynamic() const noexcept { return dynamic_live_ != 0; }

  std::size_t cached() const noexcept { return free_.size(); }
  std::size_t mapped() const noexcept { return mapped_; }
  std::size_t size() const noexcept { return size_; }
  // Dynamic-guard slots mapped, guards currently armed, switches that armed one, and runs without
  // any guard (arm failed): for tests and stats.
  std::size_t dynamic_mapped() const noexcept { return dynamic_live_; }
  std::size_t armed() const noexcept { return armed_n_; }
  std::uint64_t arms() const noexcept { return arms_; }
  std::uint64_t unguarded_runs() const noexcept { return unguarded_runs_; }

  // slot_of: the SlotInfo of the stack holding address `p` near its top (a fiber context), or
  // nullptr if `p` is not in a slot's top page. Reads memory at the top of p's page: only call it
  // with the address of a live fiber context or a stack address of the running fiber.
  static const SlotInfo* slot_of(const void* p) noexcept;
  // scratch_of: the scratch area of the slot `info` describes (kScratchBytes, just below it).
  static void* scratch_of(const SlotInfo* info) noexcept {
    return const_cast<char*>(reinterpret_cast<const char*>(info)) - kScratchBytes;
  }

  static void set_guard_limit(std::size_t limit) noexcept;
  // Static guards as guard markers (MADV_GUARD_INSTALL, Linux 6.13+) rather than PROT_NONE
  // mappings, when the kernel has them (on by default; off after the first EINVAL, or for tests).
  static void set_guard_markers(bool on) noexcept;
  static bool guard_markers() noexcept;
  static std::size_t guard_limit() noexcept;
  static std::size_t guarded_mapped() noexcept;
  static std::size_t page() noexcept;

 private:
  struct Free {
    char* top;          // end of the slot (page aligned)
    bool static_guard;
  };
  void map_chunk();
  static bool install_static_guard(char* guard) noexcept;
  void unmap_slot(const Free& f) noexcept;
  void disarm_all() noexcept;

  std::size_t size_;   // usable bytes above the guard, including the SlotInfo
  std::size_t slot_;   // size_ + one page
  std::size_t mapped_ = 0;
  std::size_t dynamic_live_ = 0;
  bool used_since_release_ = false;
  std::vector<Free> free_;
  // LRU of armed dynamic guards (guard page addresses), most recent first.
  std::array<char*, kArmed> armed_{};
  std::size_t armed_n_ = 0;
  std::uint64_t arms_ = 0;
  std::uint64_t unguarded_runs_ = 0;
};

// PooledStack: a Boost.Context StackAllocator over one worker's pool. Worker-thread only.
struct PooledStack {
  StackPool* pool;
  boost::context::stack_context allocate() { return pool->allocate(); }
  void deallocate(boost::context::stack_context& sc) noexcept { pool->deallocate(sc); }
};

}  // namespace distaff::detail
