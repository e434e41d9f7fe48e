#include "python_fiber.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <vector>

#include "distaff/execution.hpp"
#include "distaff/scheduler.hpp"

namespace distaff::py {

namespace {

// Ids given to pooled thread states on reuse. CPython hands out ids from 1 upward; starting far
// above keeps ours from ever colliding with a real thread's id.
std::atomic<std::uint64_t> g_next_tstate_id{std::uint64_t(1) << 62};

struct WorkerPy {
  PyThreadState* base = nullptr;              // the worker's own state (clears pooled ones)
  std::vector<PyThreadState*> pool;           // cleared fiber states, ready for reuse
  std::size_t stack_size = 0;
  // True while this worker holds the GIL with `base` current, i.e. between two fibers. A busy
  // worker keeps the GIL across fiber switches (a PyThreadState_Swap, ~20 ns) instead of handing it
  // to the waiting main thread and back after every task (lock-step GIL, 3x slower in the spike);
  // it gives it up when its OS thread is about to block (release_held_gil, from the fiber
  // algorithm's suspend_until) or when Python's switch interval asks from inside a body.
  bool holds_gil = false;
  // Spare data-stack chunks (see spill_alloc): a body whose frames keep crossing the end of its
  // root chunk reuses one instead of mapping and unmapping 16 KiB per call.
  std::array<void*, 4> spare_chunks{};
  std::size_t spare_n = 0;
  // The worker's threading.Thread object (a _DummyThread, shared by its fibers) has been made
  // non-daemon (adopt_thread_object); thread_keep keeps it the worker's on 3.13 (or NULL).
  bool thread_adopted = false;
  PyObject* thread_keep = nullptr;
};
thread_local WorkerPy* tl_worker_py = nullptr;

PyInterpreterState* g_interp = nullptr;

// make_current: makes `ts` this thread's current state, taking the GIL unless the worker holds it.
void make_current(WorkerPy* w, PyThreadState* ts) {
  if (w && w->holds_gil) {
    w->holds_gil = false;
    PyThreadState_Swap(ts);
  } else {
    PyEval_RestoreThread(ts);
  }
  distaff_bind_gilstate(ts);
}

// park_on_base: called by a fiber that gives up the interpreter on a worker: `base` becomes current
// and the worker keeps the GIL until its thread would block.
void park_on_base(WorkerPy* w) {
  PyThreadState_Swap(w->base);
  distaff_bind_gilstate(w->base);
  w->holds_gil = true;
}

void* on_suspend() {
  // Called with the GIL held by this fiber's (or thread's) state, right before it parks.
  WorkerPy* w = tl_worker_py;
  if (w && PyThreadState_Get() != w->base) {
    PyThreadState* ts = PyThreadState_Get();
    park_on_base(w);
    return ts;
  }
  return PyEval_SaveThread();
}

void on_resume(void* token) {
  auto* ts = static_cast<PyThreadState*>(token);
  if (!ts) return;
  make_current(tl_worker_py, ts);
}

#if PY_VERSION_HEX >= 0x030C0000
int c_recursion_budget(std::size_t stack_size) {
  // Measured: ~512 bytes of C stack per C-level recursion step, 32 KiB reserved for the rest.
  const std::size_t reserve = 32 * 1024;
  if (stack_size <= reserve) return 50;
  return static_cast<int>((stack_size - reserve) / 512);
}
#endif

// Rule 11. The root chunk of a fiber's data stack (CPython's frame stack: each Python frame's
// locals and value stack) lives in the scratch area at the top of the fiber's stack slot, whose
// page the fiber's C stack touches anyway, instead of in a 16 KiB chunk CPython maps for each
// thread state (of which a suspended body touched one more page). The layout of _PyStackChunk
// ({previous, size, top, data[]}) and the code that uses it (push_chunk, _PyThreadState_PushFrame,
// _PyThreadState_PopFrame in Python/pystate.c) are the same in 3.11, 3.12 and 3.13:
//   - a frame that does not fit makes push_chunk map a new chunk whose `previous` is ours, saving
//     our fill level in ours->top; popping that chunk's first frame frees it and goes back to
//     &ours->data[ours->top];
//   - a root chunk (previous == NULL) starts at data[1], not data[0], so no frame ever sits at its
//     data[0] and _PyThreadState_PopFrame never frees it. We start it the same way.
//   - only tstate_delete_common (PyThreadState_Delete, interpreter teardown) frees a state's
//     chunks (clear_datastack): we detach ours before the state is cleared and pooled. A state
//     still attached to a parked fiber when the interpreter tears down has ours freed with
//     munmap(): the area is not page aligned, so that fails (EINVAL) and does nothing.
_PyStackChunk* install_root_chunk(PyThreadState* ts) {
  static_assert(distaff::kFiberScratchBytes % sizeof(PyObject*) == 0);
  static_assert(distaff::kFiberScratchBytes >= offsetof(_PyStackChunk, data) + 64 * sizeof(PyObject*));
  // A state CPython already gave a chunk (not one of ours: those are detached) keeps it.
  if (ts->datastack_chunk != nullptr) return nullptr;
  void* mem = distaff::fiber_scratch();
  if (mem == nullptr) return nullptr;
  auto* chunk = static_cast<_PyStackChunk*>(mem);
  chunk->previous = nullptr;
  chunk->size = distaff::kFiberScratchBytes;
  chunk->top = 0;
  ts->datastack_chunk = chunk;
  ts->datastack_limit = reinterpret_cast<PyObject**>(static_cast<char*>(mem) + distaff::kFiberScratchBytes);
  ts->datastack_top = &chunk->data[1];  // push_chunk's `&new->data[new->previous == NULL]`
  return chunk;
}

// detach_root_chunk: makes `ts` chunk-less again (as a new state), GIL held. The body's frames are
// all popped by now, so the data stack is back in our chunk; should a chunk CPython mapped still be
// linked above it, free it the way clear_datastack does.
void detach_root_chunk(PyThreadState* ts, _PyStackChunk* root) {
  if (root == nullptr) return;
  _PyStackChunk* c = ts->datastack_chunk;
  while (c != nullptr && c != root) {
    _PyStackChunk* prev = c->previous;
    PyObjectArenaAllocator arena;
    PyObject_GetArenaAllocator(&arena);
    arena.free(arena.ctx, c, c->size);
    c = prev;
  }
  ts->datastack_chunk = nullptr;
  ts->datastack_top = nullptr;
  ts->datastack_limit = nullptr;
}

// Frames that overflow a fiber's root chunk go to a chunk push_chunk() maps through the "arena"
// allocator (_PyObject_VirtualAlloc: 16 KiB, DATA_STACK_CHUNK_SIZE, the same in 3.11–3.13), and
// popping the frame that opened it unmaps it again. With a root chunk of 1 KiB, a body that calls
// something deep in a loop would pay that mmap+munmap on every call (measured with a 2 KiB root
// chunk: recursion 20 deep went from 0.9 to 6.4 µs per call). So the arena allocator is wrapped: on
// a worker thread, freed 16 KiB blocks are kept (at most 4 per worker, freed when the worker idles
// or stops) and handed out again; everything else — pymalloc's 1 MiB arenas, other threads — goes
// to the allocator it wraps. The GIL serialises both.
constexpr std::size_t kDataStackChunkBytes = 16 * 1024;
PyObjectArenaAllocator g_arena_wrapped{};

void* spill_alloc(void* /*ctx*/, std::size_t size) {
  WorkerPy* w = tl_worker_py;
  if (size == kDataStackChunkBytes && w && w->spare_n > 0) return w->spare_chunks[--w->spare_n];
  return g_arena_wrapped.alloc(g_arena_wrapped.ctx, size);
}

void spill_free(void* /*ctx*/, void* p, std::size_t size) {
  WorkerPy* w = tl_worker_py;
  if (size == kDataStackChunkBytes && w && w->spare_n < w->spare_chunks.size()) {
    w->spare_chunks[w->spare_n++] = p;
    return;
  }
  g_arena_wrapped.free(g_arena_wrapped.ctx, p, size);
}

// free_spare_chunks: GIL held (whatever allocator we wrap may expect it).
void free_spare_chunks(WorkerPy* w) {
  while (w->spare_n > 0) g_arena_wrapped.free(g_arena_wrapped.ctx, w->spare_chunks[--w->spare_n], kDataStackChunkBytes);
}

void prepare_for_reuse(PyThreadState* ts) {
  // Called with the GIL held and `ts` not current.
  PyThreadState_Clear(ts);
  ts->id = g_next_tstate_id.fetch_add(1, std::memory_order_relaxed);
  // A body that ended through an asynchronous exception (cancel, timeout) can leave the depth
  // counter off; the next fiber starts from the top, like a new thread.
#if PY_VERSION_HEX >= 0x030C0000
  ts->py_recursion_remaining = ts->py_recursion_limit;
#else
  ts->recursion_remaining = ts->recursion_limit;
#endif
#if PY_VERSION_HEX >= 0x030C0000
  ts->_status.cleared = 0;
  ts->_status.finalizing = 0;
#endif
}

}  // namespace

bool on_any_worker() { return tl_worker_py != nullptr; }

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

void install_switch_hooks() {
  g_interp = PyInterpreterState_Get();
  PyObjectArenaAllocator current;
  PyObject_GetArenaAllocator(&current);
  if (current.alloc != &spill_alloc) {  // once per process, never wrapping itself
    g_arena_wrapped = current;
    PyObjectArenaAllocator spill{nullptr, &spill_alloc, &spill_free};
    PyObject_SetArenaAllocator(&spill);
  }
  distaff::set_switch_hooks(SwitchHooks{&on_suspend, &on_resume});
}

void release_held_gil() {
  WorkerPy* w = tl_worker_py;
  if (w && w->holds_gil) {
    w->holds_gil = false;
    PyEval_SaveThread();  // saves `base`
  }
}

void forget_worker_after_fork() { tl_worker_py = nullptr; }

void worker_started(std::size_t stack_size) {
  auto* w = new WorkerPy;
  w->stack_size = stack_size;
  w->base = PyThreadState_New(g_interp);
  tl_worker_py = w;
}

void worker_stopped() {
  WorkerPy* w = tl_worker_py;
  tl_worker_py = nullptr;
  if (!w) return;
  if (interpreter_finalizing()) {
    // Rule 7: once finalisation has begun, taking the GIL may hang or kill this thread. Leak.
    delete w;
    return;
  }
  if (!w->holds_gil) PyEval_RestoreThread(w->base);
  w->holds_gil = false;
  Py_CLEAR(w->thread_keep);  // 3.13: the worker's _DummyThread leaves threading._active
  for (PyThreadState* ts : w->pool) {
    PyThreadState_Clear(ts);
    PyThreadState_Delete(ts);
  }
  free_spare_chunks(w);
  PyThreadState_Clear(w->base);
  PyThreadState_DeleteCurrent();  // releases the GIL
  delete w;
}

void worker_idle() {
  // Keep a modest cache when idle; peak concurrency is cached while busy (a cap made fib(20) 5x
  // slower in the spike). Trimming needs the GIL, so only pay for it when there is much to trim.
  WorkerPy* w = tl_worker_py;
  // The spare data-stack chunks (at most 4) go too: an idle worker keeps no spill memory.
  constexpr std::size_t keep = 256;
  if (!w || (w->pool.size() <= keep * 2 && w->spare_n == 0) || interpreter_finalizing()) return;
  if (!w->holds_gil) PyEval_RestoreThread(w->base);
  free_spare_chunks(w);
  while (w->pool.size() > keep) {
    PyThreadState* ts = w->pool.back();
    w->pool.pop_back();
    PyThreadState_Delete(ts);  // already cleared
  }
  w->holds_gil = false;
  PyEval_SaveThread();
}

namespace {
// adopt_thread_object: the worker's threading.Thread object — a _DummyThread, as for any thread
// Python did not start, and daemon as those are — is made non-daemon. A thread a body starts takes
// its `daemon` from threading.current_thread(): it is then a non-daemon thread, as when the caller
// runs the function itself, and the program waits for it at exit (docs/limits.md, "Identity").
// Once per worker, on its first body. GIL held, no error set. Returns what keeps the object the
// worker's for its whole life (a new reference, or NULL): 3.13 removes a _DummyThread from
// threading._active when the thread state that made it is cleared — a fiber's, at the end of the
// body — through a tracker kept in a thread-local; the worker holds that tracker instead (an
// outsider's find: on 3.13 every later body got a new, daemon, _DummyThread). Dropped when the
// worker stops, which removes the object then.
PyObject* adopt_thread_object() {
  PyObject* keep = nullptr;
  PyObject* threading = PyImport_ImportModule("threading");
  PyObject* cur = threading ? PyObject_CallMethod(threading, "current_thread", nullptr) : nullptr;
  if (cur && PyObject_SetAttrString(cur, "_daemonic", Py_False) < 0) PyErr_Clear();
  PyObject* local = cur ? PyObject_GetAttrString(threading, "_thread_local_info") : nullptr;  // 3.13+
  if (local) {
    keep = PyObject_GetAttrString(local, "_track_dummy_thread_ref");
    PyObject* dummy = keep ? PyObject_GetAttrString(keep, "_dummy_thread") : nullptr;
    if (dummy == cur && PyObject_SetAttrString(local, "_track_dummy_thread_ref", Py_None) == 0) {
      // ours now: the fiber's thread-local no longer holds it
    } else {
      Py_CLEAR(keep);
    }
    Py_XDECREF(dummy);
    Py_DECREF(local);
  }
  Py_XDECREF(cur);
  Py_XDECREF(threading);
  PyErr_Clear();
  return keep;
}
}  // namespace

FiberState acquire_fiber_state() {
  WorkerPy* w = tl_worker_py;
  FiberState fs;
  if (!w->pool.empty()) {
    fs.tstate = w->pool.back();
    w->pool.pop_back();
  } else {
    // Create it on this worker (rule 2), with the GIL held by the worker's base state.
    if (!w->holds_gil) {
      PyEval_RestoreThread(w->base);
      w->holds_gil = true;
    }
    fs.tstate = PyThreadState_New(g_interp);
  }
  make_current(w, fs.tstate);
  fs.root_chunk = install_root_chunk(fs.tstate);
#if PY_VERSION_HEX >= 0x030C0000
  fs.tstate->c_recursion_remaining =
      std::min(fs.tstate->c_recursion_remaining, c_recursion_budget(w->stack_size));
#endif
  if (!w->thread_adopted) {
    w->thread_adopted = true;
    w->thread_keep = adopt_thread_object();
  }
  return fs;
}

void release_fiber_state(FiberState& fs) {
  WorkerPy* w = tl_worker_py;
  park_on_base(w);
  detach_root_chunk(fs.tstate, fs.root_chunk);
  fs.root_chunk = nullptr;
  prepare_for_reuse(fs.tstate);
  w->pool.push_back(fs.tstate);
  fs.tstate = nullptr;
}

FrameStackInfo frame_stack_info() {
  FrameStackInfo info;
  PyThreadState* ts = PyThreadState_Get();
  _PyStackChunk* root = nullptr;
  for (_PyStackChunk* c = ts->datastack_chunk; c != nullptr; c = c->previous) {
    ++info.chunks;
    root = c;
  }
  info.root_in_stack_slot = root != nullptr && root == distaff::fiber_scratch();
  if (WorkerPy* w = tl_worker_py) info.spare_chunks = static_cast<int>(w->spare_n);
  return info;
}

void install_tracer(PyObject* trace) {
  PyObject* sys_settrace = PySys_GetObject("settrace");  // borrowed
  if (!sys_settrace) return;
  PyObject* r = PyObject_CallOneArg(sys_settrace, trace);
  if (r) {
    Py_DECREF(r);
  } else {
    PyErr_WriteUnraisable(trace);
  }
}

}  // namespace distaff::py
