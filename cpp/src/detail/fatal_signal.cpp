#include "detail/fatal_signal.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#include <boost/fiber/context.hpp>

#include "detail/stack_allocator.hpp"
#include "distaff/execution.hpp"

namespace distaff::detail {

namespace {
struct sigaction g_prev_segv;
struct sigaction g_prev_bus;
thread_local bool tl_worker_thread = false;

constexpr std::size_t kAltStackSize = 64 * 1024;

// A tiny async-signal-safe string builder (no snprintf in a signal handler).
struct Msg {
  char buf[640];
  std::size_t n = 0;
  void add(const char* s) noexcept {
    while (*s && n + 1 < sizeof(buf)) buf[n++] = *s++;
  }
  void add_quoted(const char* s, std::size_t max) noexcept {
    add("'");
    for (std::size_t i = 0; s[i] && i < max && n + 2 < sizeof(buf); ++i) {
      char c = s[i];
      buf[n++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    add("'");
  }
  void add_uint(std::uint64_t v) noexcept {
    char tmp[24];
    int i = 0;
    do {
      tmp[i++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v && i < 24);
    while (i > 0 && n + 1 < sizeof(buf)) buf[n++] = tmp[--i];
  }
  void write_out() noexcept {
    const char* p = buf;
    std::size_t left = n;
    while (left > 0) {
      ssize_t w = ::write(2, p, left);
      if (w <= 0) return;
      p += w;
      left -= static_cast<std::size_t>(w);
    }
  }
};

void report(int sig, const siginfo_t* si) noexcept {
  const SlotInfo* slot = nullptr;
  if (boost::fibers::context* ctx = boost::fibers::context::active()) {
    if (ctx->is_context(boost::fibers::type::worker_context)) slot = StackPool::slot_of(ctx);
  }
  Execution* ex = current_execution();
  Msg m;
  m.add("distaff: fatal: ");
  bool overflow = false;
  if (slot && sig == SIGSEGV && si) {
    const auto addr = reinterpret_cast<std::uintptr_t>(si->si_addr);
    const auto guard = reinterpret_cast<std::uintptr_t>(slot->guard);
    // The guard page itself, or just below it (a large frame that stepped over it).
    overflow = addr + 64 * 1024 >= guard && addr < guard + StackPool::page();
  }
  if (overflow) {
    m.add("stack overflow in ");
  } else {
    m.add("signal ");
    m.add_uint(static_cast<std::uint64_t>(sig));
    m.add(sig == SIGSEGV ? " (SIGSEGV) in " : " (SIGBUS) in ");
  }
  if (ex) {
    m.add("execution ");
    m.add_uint(ex->id());
    m.add(" ");
    m.add_quoted(ex->name().c_str(), 200);
  } else {
    m.add("a distaff worker thread (no execution running)");
  }
  if (overflow) {
    m.add(" (fiber stack of ");
    m.add_uint((slot->usable + StackPool::kInfoBytes) / 1024);
    m.add(" KiB; Engine(stack_size=...) sets it)");
  }
  m.add("\n");
  m.write_out();
}

std::atomic<int> g_entered{0};

void on_fatal_signal(int sig, siginfo_t* si, void* uc) {
  const int saved_errno = errno;
  if (g_entered.fetch_add(1) != 0) {
    // Entered again (a chain that leads back here, or a second thread faulting meanwhile): end it
    // with the default action.
    ::signal(sig, SIG_DFL);
    if (si == nullptr || si->si_code <= 0) ::raise(sig);
    errno = saved_errno;
    return;
  }
  if (tl_worker_thread) report(sig, si);
  // Hand the signal to whoever had it before: put their disposition back and let the fault
  // re-execute into it (a signal sent with kill() does not re-execute: send it again).
  const struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  ::sigaction(sig, &prev, nullptr);
  if (si == nullptr || si->si_code <= 0) ::raise(sig);
  errno = saved_errno;
  (void)uc;
}
}  // namespace

void install_fatal_signal_handler() noexcept {
  // Not once per process but "unless it is there": after a fault handed the signal back, or after
  // someone else took it (a fork()ed child that reset it), the next scheduler puts it back. The
  // previous disposition saved is never ours, so chaining cannot loop.
  static std::mutex mu;
  std::lock_guard<std::mutex> g(mu);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = &on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  static bool installed_once = false;
  for (int sig : {SIGSEGV, SIGBUS}) {
    struct sigaction cur;
    if (::sigaction(sig, nullptr, &cur) != 0) continue;
    const bool ours = (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == &on_fatal_signal;
    // A handler someone installed after ours (Python's faulthandler) already chains to ours: leave
    // it in front, or the two would hand the signal back and forth.
    const bool default_action = !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL;
    if (ours || (installed_once && !default_action)) continue;
    ::sigaction(sig, &sa, sig == SIGSEGV ? &g_prev_segv : &g_prev_bus);
  }
  installed_once = true;
}

AltSignalStack::AltSignalStack() noexcept {
  tl_worker_thread = true;
  stack_t cur;
  if (::sigaltstack(nullptr, &cur) != 0 || !(cur.ss_flags & SS_DISABLE)) return;  // has one already
  const std::size_t p = StackPool::page();
  void* m = ::mmap(nullptr, kAltStackSize + p, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (m == MAP_FAILED) return;
  (void)::mprotect(m, p, PROT_NONE);  // a guard below it, like any stack
  stack_t ss;
  ss.ss_sp = static_cast<char*>(m) + p;
  ss.ss_size = kAltStackSize;
  ss.ss_flags = 0;
  if (::sigaltstack(&ss, nullptr) != 0) {
    ::munmap(m, kAltStackSize + p);
    return;
  }
  mem_ = m;
  size_ = kAltStackSize + p;
}

AltSignalStack::~AltSignalStack() {
  tl_worker_thread = false;
  if (!mem_) return;
  stack_t ss;
  std::memset(&ss, 0, sizeof(ss));
  ss.ss_flags = SS_DISABLE;
  ::sigaltstack(&ss, nullptr);
  ::munmap(mem_, size_);
}

}  // namespace distaff::detail
