#pragma once
// distaff's threads leave the process's asynchronous signals to the main thread while they idle.
//
// Linux hands a signal sent to the process (Ctrl-C's SIGINT, kill's SIGTERM, an alarm's SIGALRM) to
// the main thread when that thread is ready to take it, and otherwise to any thread that does not
// block it. CPython runs Python-level handlers on the main thread only: when its C handler runs on
// another thread it just flags the signal, and a main thread asleep in a system call (time.sleep, a
// lock's acquire, select) is not woken, so the KeyboardInterrupt waits until that call ends by
// itself. The CI saw it: a Ctrl-C sent while a done-callback on the main thread ran time.sleep(30)
// was taken by an idle worker under load, and the program sat out the 30 s (5 of 25 runs with four
// busy processes beside it).
//
// So a distaff thread blocks these signals while it waits for something to do (IdleSignalsBlocked
// around the wait), and a thread that never runs Python (an engine's join thread) blocks them for
// its whole life (block_idle_signals_for_good). A worker running bodies does not block them: a
// process a body starts inherits the signal mask of the thread that started it, through exec
// (subprocess), and must not start with Ctrl-C blocked.
//
// Only asynchronous, process-directed signals are listed. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL)
// are delivered to the faulting thread and must never be blocked; SIGPIPE and SIGXFSZ are sent to
// the thread whose write failed; SIGPROF samples the threads that use CPU, which idle ones do not.

#include <pthread.h>
#include <signal.h>

#include <cstddef>

namespace distaff::detail {

inline const sigset_t& idle_signals() noexcept {
  static const sigset_t set = [] {
    sigset_t s;
    sigemptyset(&s);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGVTALRM, SIGUSR1, SIGUSR2, SIGCHLD, SIGWINCH}) {
      sigaddset(&s, sig);
    }
    return s;
  }();
  return set;
}

// IdleSignalsBlocked: blocks idle_signals() in the calling thread for its lifetime, then puts the
// thread's previous mask back (a signal that arrived meanwhile and no other thread took is
// delivered then). Two system calls; used around waits, never on a fast path.
class IdleSignalsBlocked {
 public:
  IdleSignalsBlocked() noexcept { pthread_sigmask(SIG_BLOCK, &idle_signals(), &old_); }
  ~IdleSignalsBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  IdleSignalsBlocked(const IdleSignalsBlocked&) = delete;
  IdleSignalsBlocked& operator=(const IdleSignalsBlocked&) = delete;

 private:
  sigset_t old_;
};

inline void block_idle_signals_for_good() noexcept { pthread_sigmask(SIG_BLOCK, &idle_signals(), nullptr); }

// name_this_thread: the name `top -H`, gdb and /proc/<pid>/task/<tid>/comm show for the calling
// thread (at most 15 characters are kept). Best effort.
inline void name_this_thread(const char* name) noexcept {
  char buf[16];
  std::size_t i = 0;
  for (; name[i] && i < sizeof buf - 1; ++i) buf[i] = name[i];
  buf[i] = '\0';
  pthread_setname_np(pthread_self(), buf);
}

}  // namespace distaff::detail
