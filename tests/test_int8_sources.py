"""Every interpreter function names the C++ it reproduces (or says it is the course's own helper).

A learner reading qlib.int8 should be able to open the real kernel: each public function and class
defined in the arithmetic modules, and each module docstring, carries a line
`Reproduces: [LIBRARY: ]path (function).` or `Course helper: why.`, and every such path is a source
file. The function part of a long `Reproduces:` line may continue on the next line; the path may not.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

MODULES = ["requantize", "elementwise", "integer", "quirks", "onednn", "fixedpoint"]
LIBRARIES = ("FBGEMM", "QNNPACK", "oneDNN", "gemmlowp")
SOURCE_SUFFIXES = (".cpp", ".cc", ".c", ".h", ".S", ".py")
MAX_LINE = 110

REPRODUCES = re.compile(r"^Reproduces: (?:(?P<library>[A-Za-z]+): )?(?P<path>\S+)")


def _module(name: str):
    return importlib.import_module(f"qlib.int8.{name}")


def _public_objects(module):
    """(name, object) for each public function and class the module itself defines."""
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue                                   # imported from elsewhere
        yield name, obj


def _source_lines(doc: str | None) -> list[str]:
    return [line.strip() for line in inspect.cleandoc(doc or "").splitlines()]


def check_doc(doc: str | None) -> list[str]:
    """What is wrong with one docstring's source lines (empty: nothing)."""
    lines = _source_lines(doc)
    reproduces = [line for line in lines if line.startswith("Reproduces:")]
    helpers = [line for line in lines if line.startswith("Course helper:")]
    problems = []
    if not reproduces and not helpers:
        problems.append("no 'Reproduces:' or 'Course helper:' line")
    for line in reproduces:
        match = REPRODUCES.match(line)
        if match is None:
            problems.append(f"malformed: {line!r}")
            continue
        library, path = match.group("library"), match.group("path")
        if library is not None and library not in LIBRARIES:
            problems.append(f"unknown library {library!r} in {line!r}")
        if not path.endswith(SOURCE_SUFFIXES):
            problems.append(f"path {path!r} is not a source file ({', '.join(SOURCE_SUFFIXES)})")
    for line in helpers:
        if len(line) <= len("Course helper:") + 1:
            problems.append("'Course helper:' says nothing")
    return problems


def _all_docs():
    for name in MODULES:
        module = _module(name)
        yield f"qlib.int8.{name}", module.__doc__
        for obj_name, obj in _public_objects(module):
            yield f"qlib.int8.{name}.{obj_name}", obj.__doc__


ALL_DOCS = list(_all_docs())


@pytest.mark.parametrize("where, doc", ALL_DOCS, ids=[where for where, _ in ALL_DOCS])
def test_docstring_names_its_source(where, doc):
    assert check_doc(doc) == [], where


def test_every_module_has_public_functions_checked():
    """The parametrised test above really covers the modules (guards against an empty walk)."""
    counted = {name: sum(1 for _ in _public_objects(_module(name))) for name in MODULES}
    assert all(n > 0 for n in counted.values()), counted
    assert sum(counted.values()) >= 50, counted


def test_imported_names_are_skipped():
    """F32, f32 and rne are requantize's: elementwise imports them and must not be asked about them."""
    names = {name for name, _ in _public_objects(_module("elementwise"))}
    assert not names & {"f32", "rne", "F32", "rounding_divide_by_pot", "qmath", "math", "torch"}
    assert "CpuProfile" not in {name for name, _ in _public_objects(_module("quirks"))}


@pytest.mark.parametrize("bad", [
    "Adds two tensors.",
    "Adds two tensors.\n\n    Reproduces: somewhere (qadd_kernel).",
    "Adds two tensors.\n\n    Reproduces: aten/src/ATen/native/quantized/cpu/BinaryOps (qadd).",
    "Adds two tensors.\n\n    Reproduces: TFLite: tensorflow/lite/add.h (Add).",
    "Adds two tensors.\n\n    Course helper:",
])
def test_check_doc_rejects(bad):
    assert check_doc(bad)


@pytest.mark.parametrize("good", [
    "Adds.\n\n    Reproduces: aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (qadd).",
    "Adds.\n\n    Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h\n        (ReQuantizeOutput::f).",
    "Adds.\n\n    Reproduces: QNNPACK: src/q8gemm/8x8-aarch64-neon.S\n"
    "        (pytorch_q8gemm_ukernel_8x8__aarch64_neon).",
    "Adds.\n\n    Course helper: broadcasting only.",
])
def test_check_doc_accepts(good):
    assert check_doc(good) == []


def test_source_lines_fit():
    """Every line that names a source (or a helper's reason) is at most 110 characters."""
    root = pathlib.Path(__file__).resolve().parents[1] / "qlib" / "int8"
    long_lines = []
    for name in MODULES:
        for number, line in enumerate((root / f"{name}.py").read_text().splitlines(), 1):
            if ("Reproduces:" in line or "Course helper:" in line) and len(line) > MAX_LINE:
                long_lines.append(f"{name}.py:{number}: {len(line)} characters")
    assert long_lines == []
