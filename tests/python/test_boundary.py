"""The typed Python<->C boundary (issue 11): python/distaff/_core.pyi declares exactly what the
native module has, and the boundary's numbers are named enums with the same names and values on
both sides (cpp/bindings/boundary.cpp builds them from the C++ enums)."""

import ast
import enum
import os

import pytest

import distaff
from distaff import _core

STUB = os.path.join(os.path.dirname(distaff.__file__), "_core.pyi")


def _stub():
    with open(STUB, encoding="utf-8") as f:
        return ast.parse(f.read())


def _top_level_names(tree):
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


_STUB_ONLY = {"EngineCapsule"}  # a type alias for readers; not a runtime name


def test_the_stub_and_the_module_name_the_same_things():
    declared = set(_top_level_names(_stub())) - _STUB_ONLY
    actual = {n for n in dir(_core) if not n.startswith("__")}
    assert declared - actual == set(), "in _core.pyi but not in _core"
    assert actual - declared == set(), "in _core but not declared in _core.pyi"


@pytest.mark.parametrize("cls", ["Execution", "EngineCore", "Submitter", "Recorder"])
def test_the_stub_declares_each_method_and_attribute_of_the_types(cls):
    node = _top_level_names(_stub())[cls]
    declared = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            declared.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            declared.add(item.target.id)
    runtime = getattr(_core, cls)
    own = {n for n in vars(runtime) if not (n.startswith("__") and n.endswith("__"))}
    own.discard("_pybind11_conduit_v1_")  # pybind11's cross-module plumbing
    declared_plain = {n for n in declared if not (n.startswith("__") and n.endswith("__"))}
    assert own - declared_plain == set(), f"{cls}: not declared in _core.pyi"
    assert declared_plain - own == set(), f"{cls}: declared but missing at runtime"
    for dunder in declared - declared_plain:
        if dunder not in ("__new__", "__init__"):
            assert hasattr(runtime, dunder), f"{cls}.{dunder}"


def test_the_boundary_enums_match_the_stub_member_for_member():
    stub = _top_level_names(_stub())
    for name in ("SubmitFlag", "ShutdownCancel", "WaitFor", "SecondsKind"):
        runtime = getattr(_core, name)
        assert issubclass(runtime, enum.IntEnum if name != "SubmitFlag" else enum.IntFlag), name
        assert runtime.__module__ == "distaff._core"
        declared = {}
        for item in stub[name].body:
            if isinstance(item, ast.Assign):
                declared[item.targets[0].id] = ast.literal_eval(item.value)
        assert declared == {m.name: m.value for m in runtime}, name


def test_the_facade_uses_the_named_values():
    # The public constants and the C enums agree (distaff.ALL_COMPLETED etc. are strings mapped to them).
    from distaff import _wait

    assert _wait._MODES == {
        distaff.ALL_COMPLETED: _core.WaitFor.ALL_COMPLETED,
        distaff.FIRST_COMPLETED: _core.WaitFor.FIRST_COMPLETED,
        distaff.FIRST_EXCEPTION: _core.WaitFor.FIRST_EXCEPTION,
    }
    assert _core.NO_BOUND == -1 and _core.COMPLETION_EXHAUSTED == -2


def test_out_of_range_boundary_values_are_refused_not_misread():
    eng = distaff.Engine(workers=1)
    try:
        with pytest.raises(ValueError, match="ShutdownCancel"):
            _core.shutdown(eng._capsule, False, 3)
        with pytest.raises(ValueError, match="WaitFor"):
            _core.wait_set([], 0, 3)
    finally:
        eng.shutdown()
