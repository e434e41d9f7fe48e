#pragma once
// Shared declarations of the bindings (the only C++ that knows Python). One file per concept;
// each section below names its file (docs/internals/bindings.md has the table).

#include <Python.h>

#include <cstdint>

#include <chrono>
#include <memory>
#include <string>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "distaff/detail/idle_signals.hpp"
#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"

namespace distaff::py {

// EngineCore: one scheduler plus what the bindings keep per engine. Owned by the pybind11
// object `_core.EngineCore`; executions reach it through a capsule (fast, no pybind11 on hot paths).
struct EngineCore {
  std::unique_ptr<Scheduler> scheduler;
  std::size_t stack_size = 0;
  // Borrowed: the capsule that names this engine to raw functions; cleared by its destructor.
  PyObject* capsule = nullptr;
  pid_t pid = 0;  // the process whose threads these are (a forked child has none of them)
  unsigned fork_generation = 0;  // g_fork_generation when created: in a forked child it refuses work
  // shutdown() began: the engine admits only children of its own running bodies, and cancels
  // those "late" children when their parent finishes (closing happens before the wait).
  std::atomic<bool> closing{false};
  // Joining the workers (lifecycle.cpp). join_state: 0 not started, 1 under way (on a join
  // thread), 2 done. `dropped`: the handle is gone; whoever ends the join deletes this object.
  std::mutex join_mu;
  boost::fibers::condition_variable_any join_cv;
  int join_state = 0;
  bool dropped = false;
  std::thread joiner;  // the join thread, until whoever waited for it (or the drop) joins it
  // Finished executions kept for engine.graph() and engine.executions(): a bounded history, newest
  // last. Python-free: a failure's "Type: message" is copied as a string when the execution
  // finishes (no exception object kept alive); successes carry no extra. The workflow id is the
  // core record's (Execution::workflow_id).
  struct HistoryExtra {
    std::string error;  // empty: did not fail
  };
  struct HistoryEntry {
    ExecutionRef ex;
    std::unique_ptr<HistoryExtra> extra;
  };
  std::mutex history_mu;
  std::vector<HistoryEntry> history;
  std::size_t history_limit = 100000;
  std::size_t history_head = 0;  // ring index once full
  // (history.cpp) remember: appends, overwriting the oldest once full. history_rows: a copy, oldest
  // first, of every entry or (workflow_id not null) of those tagged with it. Any thread.
  struct HistoryRow {
    ExecutionRef ex;
    std::string workflow_id, error;
    bool tagged, failed;
  };
  void remember(const ExecutionRef& ex, std::unique_ptr<HistoryExtra> extra);
  // While a recorder (_core.Recorder, observe.cpp) observes this engine: a list the finished
  // executions' outcomes that the core's events do not carry are appended to — (id, exception or
  // None, attempts or None, traceback or None) for failures and for executions that retried. NULL otherwise. GIL.
  PyObject* outcomes = nullptr;
  // Likewise: (id, contextvars.Context) of the root executions submitted from a non-empty context.
  PyObject* contexts = nullptr;
  std::vector<HistoryRow> history_rows(const std::string* workflow_id);
  void clear_history();
};

// record_outcome: appends pe's outcome to eng->outcomes (see there), if it has one worth keeping.
// GIL held; never raises.
struct PyExecution;
void record_outcome(EngineCore* eng, PyExecution* pe, State state);
// init_observe: adds the Recorder type to the module.
bool init_observe(PyObject* module);

// The Python Execution object. Field order matters little; everything is guarded by the GIL.
struct PyExecution {
  PyObject_HEAD
  Execution* core;        // strong reference
  PyObject* engine;       // the engine capsule (strong)
  PyObject* fn;           // body, args, kwargs, context: cleared once the body has run
  PyObject* args;
  PyObject* kwargs;
  PyObject* context;      // copy of the submitter's contextvars context
  PyObject* trace;        // submitter's sys.settrace function, or NULL
  PyObject* result;       // value on success; the forward target while forwarding
  PyObject* exc;          // exception on failure
  PyObject* callbacks;    // list of done callbacks, or NULL
  PyObject* workflow_id;  // str or NULL
  PyObject* deps;         // tuple of dependency Executions (records), or NULL
  PyObject* weakrefs;
  PyObject* extra;        // dict of facade annotations shown in description (attempts...), or NULL
  PyThreadState* tstate;  // the fiber's state while its body runs, else NULL
  PyExecution* run_prev;  // the running list (bodies now running on a fiber), while tstate is set
  PyExecution* run_next;
  unsigned char observed;    // someone retrieved the exception
  unsigned char forwarding;  // 1: `result` holds the execution this one follows; 2: its body returned
                             // _core.PENDING, `result` holds that body (hold_external, run.cpp)
  unsigned char detached;    // not cancelled with its parent
  unsigned char late;        // submitted by a body while its engine was shutting down
  unsigned char shielded;    // a cancel does not raise in its body (_shield(): hands its work elsewhere)
  PyObject* deferred;        // borrowed exception type: an interrupt that came while shielded (cancel.cpp)
  unsigned char interrupt_sent;  // its body was given its interruption (raised by a wait, or queued)
  void* redelivery;              // its pending re-delivery (cancel.cpp), while one is scheduled
  unsigned char promise;     // made by _core.promise (1): a body's own promise (elsewhere bodies), a
                             // waiter's; 2 once it failed by following another execution (run.cpp)
  unsigned fork_generation;  // g_fork_generation when created: waits from a forked child fail
};

// ---- the Execution type (execution_type.cpp) --------------------------------------------------------
extern PyTypeObject* ExecutionType;
inline PyExecution* as_pe(PyObject* o) { return reinterpret_cast<PyExecution*>(o); }

// new_execution: the one constructor of a Python Execution. Wraps `core` (taking a reference) for
// `engine` (a capsule, a new reference taken; NULL for a promise); every other field empty, of the
// current fork generation. It does not link core's payload to itself: the caller does, once the
// execution may be reached through its core. Untracked (see track()). GIL held; NULL on MemoryError.
PyExecution* new_execution(const ExecutionRef& core, PyObject* engine);

// new_virtual_execution: the Python Execution of a core promise (Execution::promise): it runs no
// body, starts `running` and is finished by complete() — gather/join and async bodies. GIL held.
PyExecution* new_virtual_execution(const std::string& name, Kind kind);

// complete: stores the outcome and finishes `pe` (state must be terminal). Steals `value`.
// Runs the Python done-callbacks. GIL held. Returns false if it was already finished.
bool complete(PyExecution* pe, State state, PyObject* value);

bool init_execution_type(PyObject* module);

// track: puts an Execution under the cyclic GC. Executions start untracked: a new one cannot be in
// a reference cycle (nothing refers to it yet), and the body's arguments, the only references it
// holds then, are dropped once the body ran. It is tracked as soon as it holds something that can
// close a cycle — a GC-tracked result, an exception (traceback → frames → locals), callbacks,
// dependencies, annotations, a forward target. Measured: tracking every execution made cyclic GC
// ~17% of W1 (100k no-op tasks alive at once).
inline void track(PyExecution* pe) {
  PyObject* o = reinterpret_cast<PyObject*>(pe);
  if (!PyObject_GC_IsTracked(o)) PyObject_GC_Track(o);
}
inline bool is_execution(PyObject* o) { return Py_TYPE(o) == ExecutionType; }

// Errors: all translation between core errors and Python lives in errors.cpp.
bool init_errors(PyObject* module);
extern PyObject* CancelledError;   // distaff.CancelledError
extern PyObject* DependencyError;  // distaff.DependencyError
extern PyObject* DeadlockError;    // distaff.DeadlockError
extern PyObject* InternalError;    // distaff.InternalError
extern PyObject* ShutdownError;    // distaff.ShutdownError (RuntimeError subclass)
extern PyObject* TimeoutErrorType; // distaff.TimeoutError (builtin TimeoutError subclass)
extern PyObject* InterruptedType;  // distaff.Interrupted (BaseException): an interrupt delivered again
extern PyObject* UnobservedHook;   // distaff._errors.log_unobserved
extern PyObject* AsyncAwaitHook;   // distaff._asyncio.await_execution
// Set by _core._set_hooks (module.cpp), with AsyncAwaitHook:
extern PyObject* CallbackErrorHook;  // distaff._errors.log_callback_error (execution_type.cpp)
extern PyObject* LoggingPassHook;    // distaff._errors.pass_interrupts_through_logging (errors.cpp)
// interrupt_of_this_body: `exc_type` (distaff.CancelledError or TimeoutError) is the interruption of
// the body running on this thread state — its execution has ended, and it is not shielded — caught by
// code that only reports what it catches (a done-callback runner, sys.unraisablehook). GIL held.
bool interrupt_of_this_body(PyObject* exc_type);
// requeue_interrupt: queues `exc_type` again for this thread state's next bytecode (cancel.cpp).
bool requeue_interrupt(PyObject* exc_type);
// end_redelivery: the body of `pe` has returned: its pending re-delivery, if any, is dropped now
// rather than at its next tick (it holds a reference to `pe`). GIL held; the caller holds `pe`.
// watch_swallowed: the body of `pe` (running, not shielded) has been handed its interruption: the
// timer re-delivers it (distaff.Interrupted) while the body runs on without handling it (cancel.cpp).
// A no-op if watched already. GIL held.
void watch_swallowed(PyExecution* pe);
void end_redelivery(PyExecution* pe);
// handling_interrupt: `ts` is raising a distaff.CancelledError, TimeoutError or Interrupted, or runs
// an except/finally block or __exit__ entered for one (cancel.cpp). GIL held.
bool handling_interrupt(PyThreadState* ts);
// release_logging_locks_left_by_interrupt: the body that ran on `ts` was handed an interruption and
// has ended; logging's locks (the module's and every handler's) still owned by this OS thread were
// left held by it — the interruption landed between a lock's take and the `try:` that gives it back —
// and are released, unless another fiber of this worker is inside logging's code (cancel.cpp). GIL
// held, no error set.
void release_logging_locks_left_by_interrupt(PyThreadState* ts);
extern PyObject* LoopWaitHook;       // distaff._asyncio.wait_on_loop_thread, or NULL (waiting.cpp)
extern PyObject* ReturnedCoroutineHook;  // distaff._async_body.await_returned, or NULL (run.cpp)
// translate_current_exception: sets the Python error for the C++ exception being handled.
void translate_current_exception();
// fetch_exception: takes the raised exception (normalised, traceback attached). New reference.
PyObject* fetch_exception();
// SavedError: sets the raised exception (if any) aside for its scope and restores it after, for code
// that may run Python (and fail) where an error is pending (finalizers, history).
class SavedError {
 public:
#if PY_VERSION_HEX >= 0x030C0000
  SavedError() : exc_(PyErr_GetRaisedException()) {}
  ~SavedError() { PyErr_SetRaisedException(exc_); }
#else
  SavedError() { PyErr_Fetch(&type_, &exc_, &tb_); }
  ~SavedError() { PyErr_Restore(type_, exc_, tb_); }
#endif
  SavedError(const SavedError&) = delete;
  SavedError& operator=(const SavedError&) = delete;

 private:
#if PY_VERSION_HEX < 0x030C0000
  PyObject* type_ = nullptr;
  PyObject* tb_ = nullptr;
#endif
  PyObject* exc_ = nullptr;
};
// raise_stored: raises a stored exception object keeping its traceback. Returns NULL.
PyObject* raise_stored(PyObject* exc);
// ---- a signal handler's exception is never dropped ----
// Python code that distaff runs on the main thread on the program's behalf (a done-callback, the
// logging hook, an error note, the unobserved-error hook) can be where a signal handler runs, and
// raise: a SIGTERM handler's sys.exit, a Ctrl-C. Such code's failures are otherwise reported or
// dropped, which lost that exception: a second SIGTERM during the exit wait's cancel was lost in
// the logging hook and the exit waited for good (CI, session 16, 3.12). clear_error_keeping_signals
// and report_error_keeping_signals take the error set now: one that is not an Exception (SystemExit,
// KeyboardInterrupt, a user's BaseException) raised on the main thread is deferred — raised at the
// main thread's next bytecode (a pending call), or by the wait it is in (wait_sliced) — the others
// are cleared, or reported as unraisable (`where`). raise_deferred_signal_exception: true with the
// deferred exception raised, if there is one. GIL held.
void clear_error_keeping_signals();
// defer_signal_exception: defers the error set now if it is such a one (true); false otherwise, the
// error left set.
bool defer_signal_exception();
void report_error_keeping_signals(PyObject* where);
bool raise_deferred_signal_exception();
// add_task_note: adds "distaff: raised in task 'name' (execution N)" to a body's exception.
void add_task_note(PyObject* exc, const Execution& ex);
// add_forward_note: the note of an execution that forwarded to one that failed with `exc` (the
// error passes through it as if its body had let it propagate; _errors._note_forward).
void add_forward_note(PyObject* exc, const Execution& ex);
// note_handout: distaff hands a failed execution's exception to the code of execution `receiver`
// (result(), exception(), await in a body); add_task_note then knows a propagation from a shared
// instance raised afresh.
void note_handout(PyObject* exc, std::uint64_t receiver);

// raise_deadlock: sets DeadlockError for `waiter` waiting on `target` (Execution::deadlock_message,
// the wording the core throws with too).
void raise_deadlock(const Execution& waiter, const Execution& target);

// ---- which execution runs here (current.cpp) --------------------------------------------------------
// async_current: the execution whose async def body runs in the current asyncio task, or null.
Execution* async_current();
// running_here: the execution whose code runs here: the fiber's, else the async body's, else null.
Execution* running_here();
// submit_parent: the parent of an execution submitted here (a done-callback's registering
// execution while it runs, else running_here()). GIL held.
Execution* submit_parent();
// push/pop_callback_parent: around a done-callback run on thread state `ts` (execution_type.cpp).
void push_callback_parent(PyThreadState* ts, Execution* parent);
void pop_callback_parent(PyThreadState* ts);
bool init_current(PyObject* module);

// ---- submitting (submit.cpp) ------------------------------------------------------------------------
// submit_impl: what _core.submit and the Submitter do. New reference or NULL.
// flags: SubmitFlag bits. wait: False, True or a tuple of gating Executions.
// kwargs: dict or Py_None; wf: str or Py_None.
// InlineStart: asks submit_impl to start the execution on the calling thread instead of queueing
// it, when it can (no dependencies, not late, not born cancelled, the scheduler open): `started` is
// then true and run_inline_call must follow at once (docs/internals/sync-calls.md).
struct InlineStart {
  bool started = false;
  Scheduler* scheduler = nullptr;
  distaff::detail::FiberLocal saved;
};
PyObject* submit_impl(PyObject* capsule, PyObject* fn, PyObject* name, long flags, PyObject* wait, PyObject* args,
                      PyObject* kwargs, PyObject* wf, InlineStart* inline_start = nullptr);
// init_submit: _core.submit and the Submitter type (a task's fast submit).
bool init_submit(PyObject* module);

// ---- running bodies and forwarding (run.cpp) --------------------------------------------------------
// The scheduler's hooks implemented by the bindings.
void run_execution(Execution& ex);
// run_inline_call: runs the body of `pe`, which submit_impl started inline, on the calling thread
// and returns what result() would (new reference, or NULL with the error set), or with
// `want_result` false `pe` itself, not waited for (a kSubmitHere submit). Steals the reference
// to `pe`. A KeyboardInterrupt or SystemExit leaving the body on the main thread cancels the
// execution with its tree and goes on to the caller as it is (a Ctrl-C during the main thread's f(x)).
PyObject* run_inline_call(PyExecution* pe, InlineStart& inline_start, bool want_result = true);
// execution_result: what Execution.result() returns for `pe`, waiting if it is unfinished.
PyObject* execution_result(PyObject* execution);
void start_failed_execution(Execution& ex);
void abandon_execution(Execution& ex, Execution& failed);
// forward_execution: `pe` (running, or a promise) completes when `target` does, with its outcome.
// Fails `pe` with DeadlockError if `target` waits on it. GIL held.
void forward_execution(PyExecution* pe, PyExecution* target);
// The body of an execution that returns PendingSentinel (_core.PENDING) leaves it running, with no
// body on any fiber, until _core.settle(execution, ...) or a cancel finishes it: an async body
// started on its loop's thread settles its own execution when its asyncio task ends, with no promise
// to follow (_async_body._HereBody; docs/internals/sync-calls.md). hold_external: keeps `pe` alive
// and on the forwarding list (cancel_running, shutdown reach it) meanwhile, and keeps its body
// object in `result` as the stopper; end_external: undoes it if it was held so, returning the
// stopper (a new reference; the caller then drops the reference it held too), else NULL. A
// completion other than settle() (cancel, timeout, shutdown) calls stopper._external_stop(execution)
// (stop_external): the work elsewhere stops. GIL held.
extern PyObject* PendingSentinel;
void hold_external(PyExecution* pe, PyObject* stopper);
PyObject* end_external(PyExecution* pe);
void stop_external(PyObject* stopper, PyExecution* pe);
// mark_cycle_error: `exc` is the DeadlockError of a forward cycle, shared by every execution in it;
// cycle_error_seen: on retrieval or report, true if that error was retrieved or reported already
// (then marked). It is reported once for the cycle. unobserved.cpp.
void mark_cycle_error(PyObject* exc);
bool cycle_error_seen(PyObject* exc);
// cancel_late_forward: `pe`'s body returned `target`, a late child of its own (submitted while the
// engine shuts down). The body has finished, so the late-children rule applies as it does when the
// parent finishes first: `target` is cancelled, and `pe`, which follows it, ends cancelled. A task
// that reschedules itself by returning its next run (`return poll.submit(n + 1)`) would otherwise
// keep the shutdown, and the exit, waiting forever. GIL held. execution_type.cpp.
void cancel_late_forward(PyExecution* pe, PyExecution* target);
// running_bodies: new references to the unfinished executions of `engine` whose body is on a fiber
// now or which follow another execution (async bodies, returned Executions). GIL held.
std::vector<PyObject*> running_bodies(PyObject* engine);
void running_after_fork();
// submit_after_fork: forgets the published default engine (its workers are the parent's). submit.cpp
void submit_after_fork();

// ---- cancellation and deadlines (cancel.cpp) --------------------------------------------------------
// terminate: finishes a started or unstarted execution from outside its body (cancel, timeout):
// completes it with `state`/`value` (stolen), wakes its fiber if parked, raises `async_exc` (an
// exception class) in its body if it is running Python, and cancels its children transitively.
// GIL held. Returns false if it was already finished.
bool terminate(PyExecution* pe, State state, PyObject* value, PyObject* async_exc);
// cancel_running: terminates (as cancelled) every execution of `engine` (a capsule) whose body is
// running on a fiber now — parked in a wait or running Python. Returns how many. GIL held.
Py_ssize_t cancel_running(PyObject* engine);
void timer_after_fork();
bool init_cancel(PyObject* module);

// ---- unobserved failures (unobserved.cpp) -----------------------------------------------------------
// report_unobserved: pe is being finalized; if it failed and nobody retrieved the error, queue it
// for logging at the next safe point (or write it to stderr once the interpreter finalizes).
void report_unobserved(PyExecution* pe);
// drain_unobserved_now: logs what is queued (a safe point: the end of a body). GIL held.
void drain_unobserved_now();
bool init_unobserved(PyObject* module);

// ---- fork (fork.cpp) --------------------------------------------------------------------------------
// Incremented in a forked child: executions created before the fork can never finish there.
extern unsigned g_fork_generation;
inline bool forked_away(const PyExecution* pe) {
  return pe->fork_generation != g_fork_generation && !pe->core->done();
}
// The two ShutdownErrors of a forked child (the one wording of each). Return NULL.
PyObject* raise_forked_engine();                        // an engine capsule inherited across fork()
PyObject* raise_forked_execution(const Execution& ex);  // an execution unfinished at the fork
bool init_fork(PyObject* module);
// In a process forked by a body: that body's execution (its fiber is the process's program), else
// null. run_execution ends the process when that body ends: end_forked_body(result or NULL on error).
extern PyExecution* g_forked_body;
[[noreturn]] void end_forked_body(PyObject* result);
// on_forked_program: this is that body's fiber, the forked process's program. Its waits honour
// Ctrl-C as the main thread's do (wait_sliced; distaff.sleep), not hold it back as a worker's.
bool on_forked_program();

// ---- the engine handle, shutdown and wait_idle (engine.cpp; history.cpp) ----------------------------
EngineCore* engine_from_capsule(PyObject* capsule);
// remember_finished: records finished `pe` in its engine's history (history.cpp). GIL held.
void remember_finished(EngineCore* eng, PyExecution* pe);
bool init_engine(PyObject* module);

// ---- waiting (waiting.cpp) --------------------------------------------------------------------------
// raise_interrupted: sets CancelledError (or distaff.TimeoutError after a timeout) for a wait that
// was interrupted, dropping any asynchronous exception terminate() queued for this fiber.
void raise_interrupted();
// wait_blocking: result()/exception() waiting for unfinished `pe` (timeout: a Python number of
// seconds or None). True once it is finished; false with a Python error set.
bool wait_blocking(PyExecution* pe, PyObject* timeout);
bool init_waiting(PyObject* module);

// parse_seconds: the one check of every number of seconds distaff takes, from Python or C
// (docs/concepts.md, "Numbers of seconds"; Python calls it as _core._seconds). A number is an int,
// a float or anything with __float__/__index__, never a bool (TypeError) nor NaN (ValueError); an
// int too large for a float counts as ±inf. `out` is in seconds, +inf for "no limit".
//   wait:   None or inf: no limit; negative: 0 (an expired wait, as in concurrent.futures)
//   option: timeout= of a task: None or inf: none; must be > 0
//   length: distaff.sleep: must be >= 0 (inf: until interrupted)
//   cap:    max_delay=: None or inf: no cap; must be >= 0
//   delay:  retry_delay=: finite, >= 0.   factor: backoff=: finite, >= 0
enum class Seconds { wait = 0, option = 1, length = 2, cap = 3, delay = 4, factor = 5 };
bool parse_seconds(PyObject* v, const char* what, Seconds kind, double& out);
// deadline_after: now + seconds, or no deadline (time_point::max) from kNoLimitSeconds on.
constexpr double kNoLimitSeconds = 1e9;
Clock::time_point deadline_after(double seconds);
// parse_timeout: a wait's timeout (Seconds::wait) as a deadline. False with a Python error set.
bool parse_timeout(PyObject* timeout, Clock::time_point& deadline);

// wait_sliced: runs `park(deadline)` (true when the awaited condition holds) as the calling context
// requires: a fiber or a plain thread parks once; the main thread (and the program of a process a
// body forked) parks in short slices and runs signal handlers between them (Ctrl-C). Returns 0 when the condition holds, 1 on timeout, -1 with a
// Python error set (a translated C++ error), -2 with the exception a signal handler raised set
// (KeyboardInterrupt, or what a user's handler raised). GIL held on entry and exit.
template <class Park>
int wait_sliced(Park&& park, Clock::time_point deadline);
bool on_main_thread();
// The bodies of synchronous calls run inline on this thread (run.cpp, run_inline_call).
bool inline_here();
int inline_depth();
// note_inline_signal_exception: the raised exception (a signal handler's, in a distaff wait of
// an inline body) is an interruption of the inline calls it leaves. is_inline_signal_exception:
// `exc` is that one.
void note_inline_signal_exception();
bool is_inline_signal_exception(PyObject* exc);
void enter_inline(const Scheduler* s);
void leave_inline();
// runs_own_body_here: the calling thread is one of `s`'s workers, or runs one of its bodies inline.
bool runs_own_body_here(const Scheduler* s);
// on_python_thread_main_only: the interpreter's main thread itself (not a forked body's).
bool on_python_thread_main_only();
// main_thread_after_fork: in a child forked from a thread other than the main one, that thread is
// the child's main thread now (CPython runs signal handlers there): on_main_thread() says so.
void main_thread_after_fork();
// on_python_main_thread: the thread where Python runs signal handlers (the main thread, any
// execution on it included; in a process a body forked, that body's thread).
bool on_python_main_thread();
constexpr auto kSignalSlice = std::chrono::milliseconds(20);

bool on_any_worker();  // python_fiber.hpp

template <class Park>
int wait_sliced(Park&& park, Clock::time_point deadline) {
  try {
    if (!on_main_thread() && !on_forked_program()) {
      if (on_any_worker()) return park(deadline) ? 0 : 1;  // a fiber: its worker runs other bodies
      // A thread of the program (not the main one) parked in a distaff wait leaves Ctrl-C and the
      // other asynchronous signals to the main thread, as distaff's idle threads do
      // (idle_signals.hpp): the kernel handed SIGINT to such a waiter, and a main thread asleep in
      // time.sleep() never saw it (CI, session 12, 3.12; ~1 in 13 runs on a quiet machine).
      detail::IdleSignalsBlocked quiet;
      return park(deadline) ? 0 : 1;
    }
    for (;;) {
      if (raise_deferred_signal_exception()) {
        note_inline_signal_exception();
        return -2;
      }
      auto now = Clock::now();
      auto slice = (deadline - now > kSignalSlice) ? now + kSignalSlice : deadline;
      if (park(slice)) return 0;
      if (Clock::now() >= deadline) return 1;
      if (PyErr_CheckSignals() < 0) {
        note_inline_signal_exception();
        return -2;
      }
    }
  } catch (...) {
    translate_current_exception();
    return -1;
  }
}

// ---- wait-sets, gather/join, promises (py_wait.cpp) -------------------------------------------------
bool init_wait(PyObject* module);

// ---- engine lifecycle (lifecycle.cpp) ---------------------------------------------------------------
// register_engine/unregister_engine: every EngineCore alive in this process, so the exit hook reaches
// engines whose Engine object was dropped while their work runs. GIL held.
void register_engine(EngineCore* eng);
// engines_refused: the exit hook refuses new engines here (outside bodies once it began, everywhere
// once every engine is stopped). GIL held.
bool engines_refused();
void unregister_engine(EngineCore* eng);
// join_engine: joins the engine's workers without ever blocking a worker thread: the join runs on
// a join thread of its own, and the caller waits on a fiber-aware condition (a fiber suspends, the
// main thread waits in slices and honours Ctrl-C). Idempotent; concurrent callers all wait for the
// one join. GIL held; returns 0, or -1 with a Python error set (then the join goes on regardless).
int join_engine(EngineCore* eng);
// drop_engine: the engine's handle is being destroyed (GIL held): close it and join its workers, on
// a join thread when called from any worker (a fiber must never join threads), or here
// otherwise; the EngineCore is deleted once joined.
void drop_engine(EngineCore* eng);
bool init_lifecycle(PyObject* module);

// ---- the Python<->C boundary's numbers, named (boundary.cpp) --------------------------------------
// Each enum below is also a Python enum in _core with the same member names (upper case) and values,
// so neither side writes a bare integer: SubmitFlag (IntFlag), ShutdownCancel, WaitFor (the core's
// WaitCondition), SecondsKind (Seconds above), the Submitter's NO_BOUND and completion_next's
// COMPLETION_EXHAUSTED (WaitSet::kExhausted). _core.pyi declares them;
// tests/python/test_boundary.py checks both sides agree.
// kSubmitHere: start the execution on the calling thread if it can (run_inline_call, returning the
// execution): for a body that only hands its work over and returns (an async body's hand-off to its
// loop, submitted on that loop's thread), so no worker's fiber runs it.
enum SubmitFlag : long { kSubmitWorkflow = 1, kSubmitDetached = 2, kSubmitHere = 4 };
// shutdown(engine, wait, cancel): what to cancel besides closing.
enum class ShutdownCancel : long { none = 0, pending = 1, running = 2 };
// The Submitter's min_pos/max_pos sentinel: "always check the signature" / "no upper bound (*args)".
inline constexpr long kNoBound = -1;
constexpr long value_of(ShutdownCancel c) { return static_cast<long>(c); }
bool init_boundary(PyObject* module);
void lifecycle_after_fork();

}  // namespace distaff::py
