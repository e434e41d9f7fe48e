#pragma once
// Clang thread-safety annotations: which mutex guards which member, which functions must (not) be
// called holding it. They say in code what a comment used to say, and Clang's -Wthread-safety can
// check them; with GCC (the project's compiler) they expand to nothing.
//
// The core's mutexes are plain std::mutex, which libstdc++ does not declare as a "capability", so
// Clang checks the annotations only as far as it can see the locking; they are first of all the
// record of the locking rules. Rules a compiler cannot see (a lock taken by another function, an
// order between two mutexes) are stated next to the members and, where it is cheap, asserted with
// DISTAFF_ASSERT.

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
