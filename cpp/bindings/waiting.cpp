// Waiting: numbers of seconds and deadlines, waiting for one execution (result(), exception()) on a
// fiber, the main thread or another thread, fiber-aware sleep, and the loop-thread deadlock check.
// Raw functions only: every wait here can suspend a fiber (python_fiber.hpp, rule 4).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>

#include <sched.h>

#include "bindings.hpp"
#include "python_fiber.hpp"

namespace distaff::py {

PyObject* LoopWaitHook = nullptr;  // distaff._asyncio.wait_on_loop_thread

bool parse_seconds(PyObject* v, const char* what, Seconds kind, double& out) {
  const bool none_ok = kind == Seconds::wait || kind == Seconds::option || kind == Seconds::cap;
  if (v == Py_None && none_ok) {
    out = std::numeric_limits<double>::infinity();
    return true;
  }
  const char* expected = kind == Seconds::factor ? "a number" : "a number of seconds";
  PyNumberMethods* nb = Py_TYPE(v)->tp_as_number;
  if (PyBool_Check(v) || !(PyFloat_Check(v) || PyLong_Check(v) || (nb && (nb->nb_float || nb->nb_index)))) {
    PyErr_Format(PyExc_TypeError, "%s must be %s%s, not %.100s", what, expected, none_ok ? " or None" : "",
                 Py_TYPE(v)->tp_name);
    return false;
  }
  double t = PyFloat_AsDouble(v);
  if (t == -1.0 && PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;  // __float__ itself raised
    // An integer too large for a float (10**400): as large as a float gets, with its sign.
    PyErr_Clear();
    PyObject* zero = PyLong_FromLong(0);
    const int negative = zero ? PyObject_RichCompareBool(v, zero, Py_LT) : -1;
    Py_XDECREF(zero);
    if (negative < 0) return false;
    t = negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  }
  if (std::isnan(t)) {
    PyErr_Format(PyExc_ValueError, "%s must not be NaN", what);
    return false;
  }
  switch (kind) {
    case Seconds::wait:  // like concurrent.futures: a wait whose timeout already passed
      if (t < 0) t = 0;
      break;
    case Seconds::option:
      if (!(t > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a positive number of seconds or None, not %R", what, v);
        return false;
      }
      break;
    case Seconds::length:
    case Seconds::cap:
      if (t < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative number of seconds, not %R", what, v);
        return false;
      }
      break;
    case Seconds::delay:
    case Seconds::factor:
      if (t < 0 || std::isinf(t)) {
        PyErr_Format(PyExc_ValueError, "%s must be a finite non-negative number, not %R", what, v);
        return false;
      }
      break;
  }
  out = t;
  return true;
}

Clock::time_point deadline_after(double seconds) {
  // 1e9 s (~31 years) and beyond — inf included — is no deadline; it also keeps the sum in range.
  if (!(seconds < kNoLimitSeconds)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

bool parse_timeout(PyObject* timeout, Clock::time_point& deadline) {
  deadline = Clock::time_point::max();
  if (!timeout || timeout == Py_None) return true;
  double t;
  if (!parse_seconds(timeout, "timeout", Seconds::wait, t)) return false;
  deadline = deadline_after(t);
  return true;
}

void raise_interrupted() {
  // The execution was cancelled or timed out while parked. terminate() may also have queued an
  // asynchronous exception for it; it is moot now, and would fire again in the handler: drop it.
  PyThreadState* ts = PyThreadState_Get();
  const bool queued = ts->async_exc != nullptr;  // not delivered yet: this raise delivers it
  const bool queued_copy = queued && ts->async_exc == InterruptedType;
  Py_CLEAR(ts->async_exc);
  Execution* self = current_execution();
  PyExecution* pe = self ? static_cast<PyExecution*>(self->payload()) : nullptr;
  // The body has had its interruption, left every handler of it, and waits again: it caught it
  // and ran on (`except Exception:` around a wait in a loop). The copy is distaff.Interrupted, as
  // the timer's re-delivery's (cancel.cpp): a wait that raised the execution's own exception again
  // and again was swallowed again and again, and the timer's copy rarely found the body outside
  // the handler (outsider, session 12: 628,000 logged CancelledErrors before it did). A wait in
  // clean-up — an except/finally block or __exit__ of the interruption — still raises the
  // execution's own exception, which that clean-up may catch and go on.
  if (pe && (queued_copy || (pe->interrupt_sent && !queued && !handling_interrupt(ts)))) {
    PyErr_SetString(InterruptedType, "the execution had already ended; its body caught the interruption and ran on");
    return;
  }
  if (pe) {
    pe->interrupt_sent = 1;
    watch_swallowed(pe);  // in case the body catches this and runs on (cancel.cpp)
  }
  if (pe && pe->core->state() == State::failed && pe->exc && PyErr_GivenExceptionMatches(pe->exc, TimeoutErrorType)) {
    PyErr_SetString(TimeoutErrorType, "the execution timed out");
  } else {
    PyErr_SetString(CancelledError, "the execution was cancelled");
  }
}

namespace {

enum WaitOutcome { kDone = 0, kTimeout = 1, kInterrupted = 2, kError = -1, kSignal = -2 };

// ---- the hand-off spin (docs/internals/sync-calls.md) -------------------------------------------
// A plain thread (the main one, or any thread of the program) that waits for an unfinished
// execution first gives its CPU away with sched_yield() for up to a short window, with the GIL
// released, checking between yields whether the execution is done; only then does it park as
// before. Measured with `perf sched` on the 2-core VM: the kernel runs a woken worker on the CPU of
// the thread that woke it, and each wake-up preempts the waker, so a synchronous call whose caller
// parked took 8 to 16 context switches, the two threads taking turns to block on what the other
// held (the worker's queue lock, the GIL, CPython's GIL mutex, the execution's lock). Yielding
// instead of parking lets the worker run the body at once and leaves the caller runnable: nothing
// has to wake it, and when it runs again the worker has let the GIL go. (A busy-wait with `pause`
// instead made calls slower: on the shared CPU it only delays the worker.)
//
// Once the execution is done, the caller goes on yielding while the GIL is held, for at most
// kGilGraceNs: a worker on another CPU still holds it for the few microseconds it takes to finish
// the fiber and park, and taking a held GIL means sleeping on CPython's condition variable and being
// woken. Only briefly: a thread that runs Python meanwhile holds the GIL for whole switch
// intervals, and waiting outside CPython's GIL queue for it to be free made every call spin its
// whole window (an outsider's trial, session 14).
//
// The window adapts per thread: a spin that ends without the execution done costs credit, one that
// succeeds earns it, and a thread out of credit parks at once (long bodies, where yielding in a
// loop only burns CPU time), trying again every kRetryEvery waits; credit never goes below zero,
// so one success after a long history of long waits brings the spin back. The window never
// outlasts the wait's own deadline. DISTAFF_HANDOFF_SPIN_NS sets it in nanoseconds (0: off; at
// most 1 s; read once; anything but a non-negative integer means the default).
constexpr long kDefaultSpinNs = 50'000;
constexpr auto kGilGraceNs = std::chrono::nanoseconds(20'000);
constexpr int kCreditMax = 8, kCreditStart = 4, kRetryEvery = 64;

long spin_window_ns() {
  static const long ns = [] {
    const char* v = std::getenv("DISTAFF_HANDOFF_SPIN_NS");
    if (!v || !*v) return kDefaultSpinNs;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return (end && *end == '\0' && n >= 0) ? std::min(n, 1'000'000'000L) : kDefaultSpinNs;
  }();
  return ns;
}

struct SpinCredit {
  int credit = kCreditStart;
  int skipped = 0;
};
thread_local SpinCredit tl_spin;

// spin_until_done: true if `target` finished within the window (which ends by `deadline` at the
// latest). GIL held on entry and on return; only for a plain thread, never a fiber.
bool spin_until_done(Execution* target, Clock::time_point deadline) {
  const long window = spin_window_ns();
  if (window == 0) return false;
  SpinCredit& c = tl_spin;
  if (c.credit == 0) {
    if (++c.skipped < kRetryEvery) return false;
    c.skipped = 0;
  }
  const auto now = Clock::now();
  const auto end = std::min(deadline, now + std::chrono::nanoseconds(window));
  if (end <= now) return false;  // result(timeout=0): no waiting at all
  bool done = false;
  // A thread other than the main one leaves Ctrl-C to the main thread while it spins, as it does
  // while it parks (wait_sliced): the kernel may hand SIGINT to any thread that does not block it.
  std::optional<detail::IdleSignalsBlocked> quiet;
  if (!on_main_thread()) quiet.emplace();
  PyThreadState* ts = PyEval_SaveThread();
  for (;;) {
    sched_yield();
    if (target->done()) {
      done = true;
      break;
    }
    if (Clock::now() >= end) break;
  }
  if (done && distaff_gil_locked() != 0) {
    const auto grace = Clock::now() + kGilGraceNs;
    do {
      sched_yield();
    } while (distaff_gil_locked() != 0 && Clock::now() < grace);
  }
  PyEval_RestoreThread(ts);
  c.credit = done ? std::min(c.credit + 1, kCreditMax) : std::max(c.credit - 2, 0);
  return done;
}

// wait_core: waits for `target` as the calling context requires. A worker fiber suspends; the main
// thread parks in short slices so Ctrl-C (PyErr_CheckSignals) is honoured; other threads just park.
// The GIL is released while parked (switch hooks).
int wait_core(Execution* target, Clock::time_point deadline) {
  if (target->done()) return kDone;
  Execution* self = interruptible_execution();  // taken now: a cancel during the wait finishes it
  // (A body run inline on a plain thread spins too: it is that thread's synchronous wait.)
  if ((!self || inline_here()) && !on_any_worker() && spin_until_done(target, deadline)) return kDone;
  bool interrupted = false;
  int r = wait_sliced(
      [&](Clock::time_point d) {
        WaitStatus st = target->wait_until(d);
        interrupted = st == WaitStatus::interrupted;
        return st != WaitStatus::timeout;
      },
      deadline);
  if (r == -2) return kSignal;
  if (r < 0) return kError;
  if (r == 1) return kTimeout;
  // Woken because the target finished — but if the waiter itself was cancelled or timed out
  // meanwhile (terminate() also cancels the target when it is a child), that is what it must see.
  if (interrupted || (self && self->interrupted())) return kInterrupted;
  return kDone;
}

int wait_for_outcome(PyExecution* pe, PyObject* timeout) {
  if (forked_away(pe)) {
    raise_forked_execution(*pe->core);
    return kError;
  }
  Clock::time_point deadline;
  if (!parse_timeout(timeout, deadline)) return kError;
  int r = wait_core(pe->core, deadline);
  if (r == kSignal) {
    // A signal handler raised (Ctrl-C) while the main thread waited for this execution: like
    // asyncio.run cancelling its main task, the execution is cancelled with its tree, so the
    // interrupted program does not leave it running (nor the exit waiting for it). Only a wait that
    // a signal ended does this; a timeout that expired leaves the execution running.
    PyObject* exc = fetch_exception();
    terminate(pe, State::cancelled, nullptr, CancelledError);
    if (PyErr_Occurred()) report_error_keeping_signals(reinterpret_cast<PyObject*>(pe));
    if (!exc) {  // (a signal handler's failure always carries an exception; kept safe all the same)
      PyErr_SetString(InternalError, "a signal interrupted the wait without an exception");
      return kError;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(exc))), exc, PyException_GetTraceback(exc));
#endif
    return kError;
  }
  if (r == kTimeout) {
    PyErr_Format(PyExc_TimeoutError, "execution %llu (%s) did not finish within the timeout",
                 static_cast<unsigned long long>(pe->core->id()), pe->core->name().c_str());
  } else if (r == kInterrupted) {
    raise_interrupted();
  }
  return r;
}

}  // namespace

// wait_blocking: result()/exception() waiting for an unfinished execution. On a thread (not a fiber)
// the loop-wait hook runs first: on a thread running an asyncio event loop it refuses a wait only that
// loop could satisfy (DeadlockError) and otherwise waits itself, re-checking (returns True); it
// returns None when no loop runs in this thread (the plain wait below).
bool wait_blocking(PyExecution* pe, PyObject* timeout) {
  // (An execution inherited across fork() skips the hook: wait_for_outcome raises ShutdownError.)
  if (LoopWaitHook && (!current_execution() || inline_here()) && pe->fork_generation == g_fork_generation) {
    PyObject* r = PyObject_CallFunctionObjArgs(LoopWaitHook, reinterpret_cast<PyObject*>(pe), timeout, nullptr);
    if (!r) return false;
    const bool handled = r != Py_None;
    Py_DECREF(r);
    if (handled) return true;
  }
  return wait_for_outcome(pe, timeout) == kDone;
}

namespace {

// _seconds(value, what, kind) -> float | None: parse_seconds for the facade (one check for both
// sides). None stays None where allowed; "no limit" is inf.
PyObject* raw_seconds(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3 || !PyUnicode_Check(a[1])) {
    PyErr_SetString(PyExc_TypeError, "_seconds(value, what, kind)");
    return nullptr;
  }
  const long kind = PyLong_AsLong(a[2]);
  if (kind == -1 && PyErr_Occurred()) return nullptr;
  if (kind < 0 || kind > static_cast<long>(Seconds::factor)) {
    PyErr_SetString(PyExc_ValueError, "_seconds: bad kind");
    return nullptr;
  }
  const char* what = PyUnicode_AsUTF8(a[1]);
  if (!what) return nullptr;
  double t;
  if (!parse_seconds(a[0], what, static_cast<Seconds>(kind), t)) return nullptr;
  if (a[0] == Py_None) Py_RETURN_NONE;
  return PyFloat_FromDouble(t);
}

// _import_ident(): the "thread" identity importlib's module locks see (distaff/_imports.py). Every
// fiber of a worker shares the worker's OS thread id, so a module lock keyed by it lets a second
// fiber into a module another fiber is still executing. On a fiber: minus its thread state's id

// _reaches_any(execution, execs) -> bool: would waiting on `execution` wait (through dependencies,
// forwards and parked waits) on one of `execs` (or is it one of them)? The loop-thread deadlock check.
PyObject* raw_reaches_any(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 2 || !is_execution(a[0])) {
    PyErr_SetString(PyExc_TypeError, "_reaches_any(execution, execs)");
    return nullptr;
  }
  PyObject* seq = PySequence_Fast(a[1], "_reaches_any: execs must be a sequence");
  if (!seq) return nullptr;
  Execution* from = as_pe(a[0])->core;
  bool hit = false;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && !hit; ++i) {
    PyObject* o = PySequence_Fast_GET_ITEM(seq, i);
    if (!is_execution(o)) continue;
    Execution* m = as_pe(o)->core;
    hit = m == from || (!m->done() && m->would_deadlock(*from));
  }
  Py_DECREF(seq);
  return PyBool_FromLong(hit);
}

// sleep(seconds): fiber-aware sleep. In a task body it suspends the fiber (the worker runs others);
// elsewhere it is time.sleep.
PyObject* g_time_sleep = nullptr;
PyObject* raw_sleep(PyObject*, PyObject* seconds) {
  double t;
  if (!parse_seconds(seconds, "sleep length", Seconds::length, t)) return nullptr;
  if (!current_execution()) {
    if (!g_time_sleep) {
      PyObject* time = PyImport_ImportModule("time");
      if (!time) return nullptr;
      g_time_sleep = PyObject_GetAttrString(time, "sleep");
      Py_DECREF(time);
      if (!g_time_sleep) return nullptr;
    }
    // time.sleep refuses lengths past ~292 years: sleep in day-long pieces (inf: until interrupted).
    for (;;) {
      const double piece = std::min(t, 86400.0);
      PyObject* arg = PyFloat_FromDouble(piece);
      PyObject* r = arg ? PyObject_CallOneArg(g_time_sleep, arg) : nullptr;
      Py_XDECREF(arg);
      if (!r) return nullptr;
      Py_DECREF(r);
      t -= piece;
      if (!(t > 0)) Py_RETURN_NONE;
    }
  }
  const auto deadline = deadline_after(t);
  // On a fiber the sleep parks once; the program of a process a body forked sleeps in slices and
  // runs signal handlers between them (wait_sliced), as the main thread's waits do.
  WaitStatus st = WaitStatus::timeout;
  const int r = wait_sliced(
      [&](Clock::time_point until) {
        st = sleep_until(until);
        return st == WaitStatus::interrupted || Clock::now() >= deadline;
      },
      deadline);
  if (r < 0) return nullptr;  // a translated C++ error, or what a signal handler raised
  if (st == WaitStatus::interrupted) {
    raise_interrupted();
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef waiting_functions[] = {
    {"_seconds", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_seconds)), METH_FASTCALL,
     "_seconds(value, what, kind) -> float | None: validates a number of seconds (bindings.hpp, Seconds)"},
    {"sleep", &raw_sleep, METH_O,
     "sleep(seconds)\n--\n\nIn a task body: suspends the fiber, not the thread. Elsewhere: time.sleep."},
    {"_reaches_any", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&raw_reaches_any)), METH_FASTCALL,
     "_reaches_any(execution, execs) -> bool: does waiting on execution wait on one of execs?"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool init_waiting(PyObject* module) { return PyModule_AddFunctions(module, waiting_functions) == 0; }

}  // namespace distaff::py
