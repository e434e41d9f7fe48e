// All translation between the core's C++ errors and Python exceptions.

#include <exception>
#include <new>
#include <string>

#include "bindings.hpp"

namespace distaff::py {

PyObject* CancelledError = nullptr;
PyObject* DependencyError = nullptr;
PyObject* DeadlockError = nullptr;
PyObject* InternalError = nullptr;
PyObject* ShutdownError = nullptr;
PyObject* TimeoutErrorType = nullptr;
PyObject* InterruptedType = nullptr;
PyObject* UnobservedHook = nullptr;
PyObject* AsyncAwaitHook = nullptr;
PyObject* NoteHook = nullptr;
PyObject* HandoutHook = nullptr;
PyObject* ForwardNoteHook = nullptr;
PyObject* LoggingPassHook = nullptr;

bool init_errors(PyObject* module) {
  // The exception classes are defined in Python (distaff/_errors.py) so users can see and subclass
  // them; the bindings only hold references.
  PyObject* m = PyImport_ImportModule("distaff._errors");
  if (!m) return false;
  struct {
    PyObject** slot;
    const char* name;
  } names[] = {{&CancelledError, "CancelledError"}, {&DependencyError, "DependencyError"},
               {&DeadlockError, "DeadlockError"},   {&InternalError, "InternalError"},
               {&ShutdownError, "ShutdownError"},   {&UnobservedHook, "log_unobserved"},
               {&TimeoutErrorType, "TimeoutError"}, {&NoteHook, "_note_failure"},
               {&HandoutHook, "_handed_out"},       {&ForwardNoteHook, "_note_forward"},
               {&InterruptedType, "Interrupted"},   {&LoggingPassHook, "pass_interrupts_through_logging"}};
  for (auto& n : names) {
    *n.slot = PyObject_GetAttrString(m, n.name);
    if (!*n.slot) {
      Py_DECREF(m);
      return false;
    }
  }
  Py_DECREF(m);
  return true;
}

void raise_deadlock(const Execution& waiter, const Execution& target) {
  PyErr_SetString(DeadlockError, Execution::deadlock_message(waiter, target).c_str());
}

void translate_current_exception() {
  try {
    throw;
  } catch (const distaff::DeadlockError& e) {  // its text is Execution::deadlock_message
    PyErr_SetString(DeadlockError, e.what());
  } catch (const distaff::ShutdownError& e) {
    PyErr_SetString(ShutdownError, e.what());
  } catch (const distaff::InternalError& e) {
    PyErr_SetString(InternalError, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_Format(InternalError, "distaff internal error: %s", e.what());
  } catch (...) {
    PyErr_SetString(InternalError, "distaff internal error: unknown C++ exception");
  }
}

PyObject* fetch_exception() {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
  PyErr_NormalizeException(&t, &v, &tb);
  if (tb) PyException_SetTraceback(v, tb);
  Py_XDECREF(t);
  Py_XDECREF(tb);
  return v;
#endif
}

PyObject* raise_stored(PyObject* exc) {
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(Py_NewRef(exc));
#else
  PyObject* tb = PyException_GetTraceback(exc);  // new ref or NULL
  PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(exc))), Py_NewRef(exc), tb);
#endif
  return nullptr;
}

namespace {
PyObject* g_deferred_signal_exc = nullptr;  // see clear_error_keeping_signals (bindings.hpp)
bool g_deferred_call_queued = false;

int raise_deferred_pending(void*) {
  g_deferred_call_queued = false;
  return raise_deferred_signal_exception() ? -1 : 0;
}

}  // namespace

bool defer_signal_exception() {
  PyObject* et = PyErr_Occurred();
  if (!et || PyErr_GivenExceptionMatches(et, PyExc_Exception) || !on_python_main_thread()) return false;
  PyObject* exc = fetch_exception();
  if (g_deferred_signal_exc) {  // one is waiting already: the first one wins, as a raise would
    Py_XDECREF(exc);
    return true;
  }
  g_deferred_signal_exc = exc;
  // The queue of pending calls may be full: the next wait_sliced raises it all the same.
  if (!g_deferred_call_queued && Py_AddPendingCall(&raise_deferred_pending, nullptr) == 0) {
    g_deferred_call_queued = true;
  }
  return true;
}

void clear_error_keeping_signals() {
  if (!defer_signal_exception()) PyErr_Clear();
}

void report_error_keeping_signals(PyObject* where) {
  if (!defer_signal_exception()) PyErr_WriteUnraisable(where);
}

bool raise_deferred_signal_exception() {
  PyObject* exc = g_deferred_signal_exc;
  if (!exc) return false;
  g_deferred_signal_exc = nullptr;
  raise_stored(exc);
  Py_DECREF(exc);
  return true;
}

namespace {
// note_via: "distaff: raised in <kind> '<name>' (execution N)", added to exc by hook(exc, note, id).
// An exception type that refuses notes keeps its original message.
void note_via(PyObject* hook, PyObject* exc, const Execution& ex) {
  if (!PyExceptionInstance_Check(exc)) return;
  PyObject* note = PyUnicode_FromFormat("distaff: raised in %s '%s' (execution %llu)",
                                        to_string(ex.kind()), ex.name().c_str(),
                                        static_cast<unsigned long long>(ex.id()));
  if (!note) {
    PyErr_Clear();
    return;
  }
  PyObject* r = PyObject_CallFunction(hook, "OOK", exc, note, static_cast<unsigned long long>(ex.id()));
  Py_DECREF(note);
  if (r) {
    Py_DECREF(r);
  } else {
    clear_error_keeping_signals();
  }
}
}  // namespace

// Once per exception object and execution, never growing a shared instance (_errors._note_failure).
void add_task_note(PyObject* exc, const Execution& ex) { note_via(NoteHook, exc, ex); }

void add_forward_note(PyObject* exc, const Execution& ex) { note_via(ForwardNoteHook, exc, ex); }

void note_handout(PyObject* exc, std::uint64_t receiver) {
  PyObject* r = PyObject_CallFunction(HandoutHook, "OK", exc, static_cast<unsigned long long>(receiver));
  if (r) {
    Py_DECREF(r);
  } else {
    clear_error_keeping_signals();  // bookkeeping only: the error itself is delivered regardless
  }
}

}  // namespace distaff::py
