/* CPython 3.11 only: rebind the interpreter's "this OS thread's state" slot to a fiber's state.
 *
 * Why: PyEval_RestoreThread(tstate) makes `tstate` current but, on 3.11, leaves the PyGILState TSS
 * key pointing at whichever state was bound first on this OS thread. Fibers share an OS thread, so
 * after a switch PyGILState_Ensure (ctypes callbacks, C extensions, pybind11's gil_scoped_acquire)
 * would find another fiber's state, decide the GIL is not held, and deadlock trying to take it; C
 * callbacks would also run under the wrong fiber's exception and context state. 3.12 rebinds on
 * every activation (tstate_activate -> bind_gilstate_tstate) and 3.13 on attach, so this is a no-op
 * there.
 *
 * This needs the interpreter's internal runtime struct, hence Py_BUILD_CORE, kept to this one file.
 * It is C, not C++, because the internal headers are only meant to compile as C. */
#define Py_BUILD_CORE 1  /* before Python.h: 3.12's internal headers redeclare public functions otherwise */
#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000
#include "internal/pycore_runtime.h"

void distaff_bind_gilstate(PyThreadState* tstate) {
    Py_tss_t* key = &_PyRuntime.gilstate.autoTSSkey;
    if (PyThread_tss_get(key) != (void*)tstate) {
        PyThread_tss_set(key, (void*)tstate);
    }
}
#else
void distaff_bind_gilstate(PyThreadState* tstate) { (void)tstate; }
#endif

/* distaff_gil_locked: 1 if some thread holds the GIL now (a racy sample, for the elastic monitor:
 * workers stuck while the GIL is free are in blocking calls, where another thread helps; stuck while
 * it is held, they run or wait for Python, where one does not). Internal state, hence this file. */
#if PY_VERSION_HEX < 0x030C0000
#include "internal/pycore_gil.h"
int distaff_gil_locked(void) { return _Py_atomic_load_relaxed(&_PyRuntime.ceval.gil.locked); }
#elif PY_VERSION_HEX < 0x030D0000
#include "internal/pycore_interp.h"
int distaff_gil_locked(void) {
    PyInterpreterState* interp = PyInterpreterState_Main();
    return interp->ceval.gil ? _Py_atomic_load_relaxed(&interp->ceval.gil->locked) : 1;
}
#else
#include "internal/pycore_interp.h"
int distaff_gil_locked(void) {
    PyInterpreterState* interp = PyInterpreterState_Main();
    return interp->ceval.gil ? _Py_atomic_load_int_relaxed(&interp->ceval.gil->locked) : 1;
}
#endif

/* distaff_swap_main_tstate: 3.13 keeps the eval breaker per thread state, and a signal handler
 * (trip_signal -> _PyEval_SignalReceived) sets "signals pending" on _PyRuntime.main_tstate: the
 * state the main thread started with. A synchronous call's body runs on the main thread with a
 * state of its own (run_inline); without this its eval loop would never see Ctrl-C. 3.11 and 3.12
 * keep the flag per interpreter, which every state of the main thread sees. */
#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_runtime.h"
#include "internal/pycore_ceval.h"
PyThreadState* distaff_swap_main_tstate(PyThreadState* tstate) {
    PyThreadState* old = _PyRuntime.main_tstate;
    _PyRuntime.main_tstate = tstate;
    /* A signal that arrived while the other state was the main one: its flag goes along. */
    if (old != NULL && (_Py_atomic_load_uintptr_relaxed(&old->eval_breaker) & _PY_SIGNALS_PENDING_BIT)) {
        _Py_set_eval_breaker_bit(tstate, _PY_SIGNALS_PENDING_BIT);
    }
    return old;
}
#else
PyThreadState* distaff_swap_main_tstate(PyThreadState* tstate) { (void)tstate; return NULL; }
#endif
