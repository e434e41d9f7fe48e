#pragma once
// fork() by a body: the locks its fiber needs in the child.
//
// A child gets one thread, the forking one, and a copy of every lock as it was at that instant: a
// lock another thread held then stays held for good, and the child's first wait that needs it hangs
// (an outsider's stress program: 20 bodies looping on distaff.sleep, another forking from a body
// the main thread waits on; ~1 child in 100-400 hung). The locks the forking fiber can need there
// are all taken by the forking thread around fork() (pthread_atfork, execution.cpp), in the order
// every other path takes them, so each is copied free and its data consistent:
//
//   1. the wait graph's mutex (g_graph_mu: every park, forward and interrupt);
//   2. the forking execution's own mutex and the spinlock of its done condition (the fiber's sleeps
//      park on them; a thread waiting for the body's result takes both: gdb on a hung child showed
//      it in pthread_mutex_lock in sleep_until, or spinning on the condition's spinlock);
//   3. the worker's fiber scheduler's remote-ready spinlock and its algorithm's mutex (another
//      thread waking a fiber of this worker takes both; the child's dispatcher takes them on every
//      park, and a thread the child starts later takes them to wake the fiber).
//
// Order: graph -> execution mutex -> condition spinlock -> scheduler spinlock -> algorithm mutex,
// which is the order of Execution::interrupt (graph, then the target's mutex), finish (mutex, then
// notify: the condition's spinlock, then the woken fiber's scheduler's) and Boost's
// schedule_from_remote (the scheduler's spinlock released before the algorithm's notify).

namespace distaff::detail {

// lock_fiber_scheduler_for_fork / unlock_fiber_scheduler_after_fork: step 3, on a worker thread
// (nothing elsewhere). scheduler.cpp.
void lock_fiber_scheduler_for_fork() noexcept;
void unlock_fiber_scheduler_after_fork() noexcept;

// PrivateMember: names a private data member of a Boost.Fiber class (the spinlocks above, which
// Boost gives no accessor). An explicit instantiation may name a private member ([temp.spec]):
// the friend it defines hands the member pointer out.
template <typename Tag, typename Tag::type Member>
struct PrivateMember {
  friend typename Tag::type member_of(Tag) { return Member; }
};

}  // namespace distaff::detail
