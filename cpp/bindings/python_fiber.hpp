#pragma once
// Interpreter state at fiber switches: the one place where CPython meets Boost.Fiber.
//
// The rules (docs/internals/scheduler.md, "The rules, the code, the proof"), each of which was a crash or a hang in the
// prototype when broken:
//  1. One PyThreadState per fiber, current only while that fiber runs. So exception state, recursion
//     depth, threading.local, contextvars and asyncio's running loop are per fiber, as per thread.
//     A fiber that parks hands the interpreter back to its worker's own state; the worker keeps the
//     GIL across switches while it has ready fibers and releases it before its OS thread blocks
//     (on_worker_block). The prototype released the GIL at every suspension instead: that made a busy worker and a waiting main thread trade the GIL once per task.
//     What the rule protects is unchanged: no OS thread ever blocks holding the GIL, and no fiber
//     runs Python with another fiber's state. Never use PyGILState_* or gil_scoped_acquire in a fiber.
//  2. Fibers are pinned to their worker; thread states are created on the worker that uses them
//     (3.12+ binds a state to its creating thread).
//  3. CPython 3.11: PyEval_RestoreThread does not rebind the interpreter's "this thread's state" slot
//     (PyGILState's TSS key). Left stale, PyGILState_Ensure from C code (ctypes callbacks, extensions)
//     in a resumed fiber sees another fiber's state and deadlocks. gilstate_compat.c rebinds it.
//  4. pybind11 keeps a per-OS-thread stack of in-flight calls; a fiber that suspends inside a
//     pybind11-bound call corrupts it. Every entry point that can suspend is a raw METH_FASTCALL
//     function (execution_type.cpp, waiting.cpp, py_wait.cpp, engine.cpp), never a pybind11 def.
//  5. Thread states are pooled per worker (new+delete costs 20–27 µs, reuse ~70 ns). On reuse the
//     state is cleared, gets a fresh id (asyncio caches a borrowed running-loop pointer keyed by the
//     id: SIGSEGV on 3.12.1 otherwise), and on 3.12+ its cleared/finalizing bits are reset.
//  6. On 3.12+, each fiber's C recursion budget is capped to what its stack can hold.
//  7. Once the interpreter is finalizing, no worker touches the GIL (states are leaked, not freed).
//  8. A tracer installed in the submitting thread (sys.settrace: coverage, pdb) is installed in the
//     fiber too; sys.monitoring (3.12+) sees fibers by itself.
//  10. CPython 3.14 stack protection needs per-state stack bounds: set them in acquire_fiber_state().
//  11. A fiber's frames start in its own stack slot: acquire_fiber_state() installs the root chunk
//      of the thread state's data stack in the slot's scratch area (distaff::fiber_scratch(), in
//      the stack's top page), and release_fiber_state() detaches it before the state is cleared,
//      so CPython never frees it. Frames that do not fit spill into chunks CPython maps (and frees)
//      itself, linked to ours. docs/internals/scheduler.md, "Memory per suspended execution".

#include <Python.h>

#include <cstddef>

namespace distaff::py {

// install_switch_hooks: registers on_suspend/on_resume with the core. Call once at module init.
void install_switch_hooks();

// Worker lifecycle (called by the scheduler on each worker thread).
void worker_started(std::size_t stack_size);
void worker_stopped();
void worker_idle();
// release_held_gil: the worker's thread is about to block; give up the GIL if it keeps it.
void release_held_gil();
// forget_worker_after_fork: in a process forked by a body, the calling worker thread stops being one
// for the interpreter: CPython deleted its base and pooled thread states (only the forking fiber's
// survives), so they are forgotten (leaked) and the fiber parks like a plain thread's code.
void forget_worker_after_fork();

// FiberState: the interpreter state a fiber runs with.
struct FiberState {
  PyThreadState* tstate = nullptr;
  // The data-stack root chunk installed in the fiber's stack slot (rule 11), or nullptr.
  _PyStackChunk* root_chunk = nullptr;
};

// acquire_fiber_state: takes a pooled (or new) thread state for this worker and takes the GIL with it.
// Worker fibers only, GIL not held.
FiberState acquire_fiber_state();
// release_fiber_state: clears the state, returns it to the pool and releases the GIL.
// Called by the fiber that acquired it, with the GIL held by that state.
void release_fiber_state(FiberState& fs);

// frame_stack_info: the current thread state's data stack (tests). GIL held.
struct FrameStackInfo {
  bool root_in_stack_slot = false;  // its root chunk is this fiber's scratch area (rule 11)
  int chunks = 0;                   // chunks in its chain: more than 1 once frames spilled
  int spare_chunks = 0;             // spare 16 KiB chunks this worker keeps for spills
};
FrameStackInfo frame_stack_info();

// install_tracer: installs `trace` (a sys.settrace callable) in the current fiber. GIL held.
void install_tracer(PyObject* trace);

// on_any_worker: true on a worker thread of any engine (fibers run here: never block it).
bool on_any_worker();

// interpreter_finalizing: true once Py_Finalize has begun (workers must not take the GIL then).
bool interpreter_finalizing();

}  // namespace distaff::py

extern "C" {
// gilstate_compat.c: bind the PyGILState slot of this OS thread to `tstate` (no-op on 3.12+).
void distaff_bind_gilstate(PyThreadState* tstate);
// gilstate_compat.c: 1 if some thread holds the GIL now (a racy sample).
int distaff_gil_locked(void);
}
