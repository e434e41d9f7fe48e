#pragma once
// Error kinds of the core, and DISTAFF_ASSERT for invariants.

#include <stdexcept>
#include <string>

namespace distaff {

// ShutdownError: thrown by Scheduler::submit once shutdown() has begun.
class ShutdownError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// DeadlockError: thrown by Execution::wait_until when the calling execution would wait,
// directly or through a chain of waits and dependencies, on itself.
class DeadlockError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// InternalError: a bug in distaff (a broken invariant). Never swallowed.
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {
[[noreturn]] void assertion_failed(const char* expr, const char* file, int line);
}  // namespace detail

}  // namespace distaff

#if defined(DISTAFF_ENABLE_ASSERTS)
#define DISTAFF_ASSERT(expr) \
  ((expr) ? (void)0 : ::distaff::detail::assertion_failed(#expr, __FILE__, __LINE__))
#else
#define DISTAFF_ASSERT(expr) ((void)0)
#endif
