#pragma once
// Clang thread-safety annotations: which mutex guards which member, which functions must (not) be
// called holding it. They say in code what a comment used to say, and Clang's -Wthread-safety can
// check them; with GCC (the project's compiler) they expand to nothing.
//
// The core's mutexes are plain std::mutex. libstdc++ does not declare it a "capability"; libc++
// does (with _LIBCPP_ENABLE_THREAD_SAFETY_ANNOTATIONS), std::lock_guard included but not
// std::unique_lock: the core uses UniqueLock below where it needs a relockable lock (condition
// variables, a lock dropped around a callback). `make thread-safety` compiles the core with Clang,
// libc++ and -Wthread-safety -Werror (syntax only: Boost is built against libstdc++). Rules a
// compiler cannot see (an order between the mutexes of two objects) are stated next to the members
// and, where cheap, asserted with DISTAFF_ASSERT.

#include <mutex>

#if defined(__clang__) && !defined(SWIG)
#define DISTAFF_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define DISTAFF_THREAD_ANNOTATION(x)
#endif

// A member read or written only while holding `mu`.
#define DISTAFF_GUARDED_BY(mu) DISTAFF_THREAD_ANNOTATION(guarded_by(mu))
// A pointer member whose pointee is accessed only while holding `mu`.
#define DISTAFF_PT_GUARDED_BY(mu) DISTAFF_THREAD_ANNOTATION(pt_guarded_by(mu))
// A function the caller must call holding `mu` (it does not take it itself).
#define DISTAFF_REQUIRES(...) DISTAFF_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// A function that takes `mu` itself: the caller must not hold it.
#define DISTAFF_EXCLUDES(...) DISTAFF_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// Lock order: this mutex is taken after (or before) the named ones, never the other way round.
#define DISTAFF_ACQUIRED_AFTER(...) DISTAFF_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define DISTAFF_ACQUIRED_BEFORE(...) DISTAFF_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define DISTAFF_SCOPED_CAPABILITY DISTAFF_THREAD_ANNOTATION(scoped_lockable)
#define DISTAFF_ACQUIRE(...) DISTAFF_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define DISTAFF_RELEASE(...) DISTAFF_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
// A function whose locking the analysis cannot follow (locks held across a call it does not see).
#define DISTAFF_NO_THREAD_SAFETY_ANALYSIS DISTAFF_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace distaff {

// UniqueLock: std::unique_lock<std::mutex> (it binds to std::condition_variable::wait) that tells
// the analysis it holds `m` from construction to destruction, except between unlock() and lock().
class DISTAFF_SCOPED_CAPABILITY UniqueLock : public std::unique_lock<std::mutex> {
 public:
  explicit UniqueLock(std::mutex& m) DISTAFF_ACQUIRE(m) : std::unique_lock<std::mutex>(m) {}
  ~UniqueLock() DISTAFF_RELEASE() {}
  void lock() DISTAFF_ACQUIRE() { std::unique_lock<std::mutex>::lock(); }
  void unlock() DISTAFF_RELEASE() { std::unique_lock<std::mutex>::unlock(); }
};

}  // namespace distaff
