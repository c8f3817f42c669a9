"""The checkers' contract (issue 11.2): whatever a learner passes, a checker neither lies nor crashes.

Every check_* that qlib.checks exports (found from qlib.checks.__all__, so a checker added later is
covered without editing this file) is called with a battery of bad answers in each argument
position: each call must return False (never True, never raise) and print a `Not yet:` sentence.
The other required arguments get None, a plain number (0.5) or the same bad value: what a learner's
half-written notebook passes; each checker's own tests cover the right answers.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from qlib import checks

CHECKERS = sorted(name for name in checks.__all__ if name.startswith("check_"))


def _raises_value_error(*args, **kwargs):
    raise ValueError("the learner's own bug")


def _unwritten_stub(*args, **kwargs):
    raise NotImplementedError()


def _returns_none(*args, **kwargs):
    return None


def _returns_nan(*args, **kwargs):
    return torch.full((3,), float("nan"))


def _battery() -> dict:
    """The bad answers: each a value no checker may accept, wherever it is passed."""
    torch.manual_seed(0)
    return {
        "None": None,
        "a string": "0.5",
        "a float64 tensor": torch.rand(3, 4, dtype=torch.float64) + 0.37,
        "a float16 tensor": (torch.rand(3, 4) + 0.37).to(torch.float16),
        "a NaN tensor": torch.full((3, 4), float("nan")),
        "a tensor of the wrong shape": torch.full((2, 3, 5, 7), 0.37),
        "a function raising ValueError": _raises_value_error,
        "a stub raising NotImplementedError": _unwritten_stub,
        "a function that does nothing (returns None)": _returns_none,
        "a function returning NaN": _returns_nan,
    }


BATTERY = _battery()


def _parameters(checker) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(checker).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _call(checker, parameters, position: int, bad, others):
    """checker with `bad` at `position`; required parameters elsewhere get `others`, optional ones
    keep their default. Arguments go by name (positional-only ones by position)."""
    args, kwargs = [], {}
    for i, p in enumerate(parameters):
        if i != position and p.default is not inspect.Parameter.empty:
            continue
        value = bad if i == position else others
        if p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[p.name] = value
    return checker(*args, **kwargs)


def test_every_module_exports_its_checkers():
    assert CHECKERS, "qlib.checks exports no check_* function"
    assert set(checks.__all__) - set(CHECKERS) == {"report"}
    for name in CHECKERS:
        assert callable(getattr(checks, name)), name


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_refuses_every_bad_answer_in_every_position(name, capsys):
    checker = getattr(checks, name)
    parameters = _parameters(checker)
    assert parameters, f"{name} takes no argument"
    failures = []
    for position, parameter in enumerate(parameters):
        others_required = any(p.default is p.empty for i, p in enumerate(parameters) if i != position)
        for label, bad in BATTERY.items():
            fills = (("None", None), ("0.5", 0.5), ("the same bad value", bad)) if others_required else (("-", None),)
            for others_label, others in fills:
                where = f"{name}({parameter.name}={label}, other required arguments {others_label})"
                try:
                    result = _call(checker, parameters, position, bad, others)
                except BaseException as exc:  # noqa: BLE001 - a checker must not raise anything
                    failures.append(f"{where} raised {type(exc).__name__}: {exc}")
                    continue
                printed = capsys.readouterr().out
                if result is not False:
                    failures.append(f"{where} returned {result!r}, not False")
                elif "Not yet: " not in printed or not printed.split("Not yet: ", 1)[1].strip():
                    failures.append(f"{where} printed no 'Not yet:' sentence: {printed!r}")
    assert not failures, f"{len(failures)} contract failure(s):\n" + "\n".join(failures)
