#pragma once
// Fatal signals on worker threads: name the execution, and leave room to say it.
//
// A fiber that overflows its stack faults on the guard page below it (stack_allocator.hpp). By
// default that kills the process with nothing but "Segmentation fault", and a handler that wants to
// say more — Python's faulthandler, ours — needs an alternate signal stack, since the faulting
// stack has no room left. Worker threads get one each (AltSignalStack), and the process gets one
// SIGSEGV/SIGBUS handler (install_fatal_signal_handler) that, for a fault on a worker, writes
//
//     distaff: fatal: stack overflow in execution 42 'parse' (fiber stack of 8192 KiB; ...)
//
// (or "signal 11 (SIGSEGV) in execution 42 'parse'" for other faults) with write(2) only, then puts
// the previous disposition back and returns, so the fault re-executes into whatever handled it
// before (faulthandler's traceback, a sanitizer's report, or the default action: death by the same
// signal, exit status 128 + 11). Faults on other threads pass straight through.

namespace distaff::detail {

// install_fatal_signal_handler: installs the handler unless it is already in place (every Scheduler
// calls it when it starts). Thread-safe.
void install_fatal_signal_handler() noexcept;

// AltSignalStack: gives the calling thread an alternate signal stack for its lifetime, unless it
// already has one (a sanitizer's), and marks it as a worker for the handler.
class AltSignalStack {
 public:
  AltSignalStack() noexcept;
  ~AltSignalStack();
  AltSignalStack(const AltSignalStack&) = delete;
  AltSignalStack& operator=(const AltSignalStack&) = delete;

 private:
  void* mem_ = nullptr;
  unsigned long size_ = 0;
};

}  // namespace distaff::detail
