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
