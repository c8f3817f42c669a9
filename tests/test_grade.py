"""The autograder (issue 11.5): `python -m qlib.grade SUBMISSIONS_DIR [--out grades.csv]`.

The grading rules, the two layouts, the CSV, the errors, the time limits and the network guard
are tested on a tiny synthetic course (a kernel start and a torch import per notebook, a few
seconds). The real notebook 01 is graded three ways: the instructor copy (full marks), the student
copy (zero) and a copy with one exercise answered wrongly (that one fails with the checker's
message, the others pass); notebook 02 the last way only (nbval runs its instructor copy and the
bite test its student copy).
"""

from __future__ import annotations

import ast
import csv
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from qlib import grade, student
from qlib.paths import REPO_ROOT

from test_student import good

REAL = [p for p in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) if p.name[:2] in ("01", "02")]


def _csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        return reader.fieldnames, list(reader)


def _by(rows, learner=None):
    return {(r.learner, r.exercise): r for r in rows if learner in (None, r.learner)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A course of one notebook (01_tiny: 01-scale, 1 point; 01-quantize, 2 points) and its student
    copy, beside a notebook that breaks the convention."""
    root = tmp_path_factory.mktemp("tiny")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    nb, name = good()
    nbformat.write(nb, str(notebooks / name))
    (notebooks / "helper.txt").write_text("relative files are there")
    # a notebook that breaks the convention blocks the grading of its own submissions only
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell("**Exercise 2.1 (easy): x.**"),
                                       new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")]),
                   str(notebooks / "02_broken.ipynb"))
    return notebooks, nb, student.student_copy(nb, name)


def _write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_folders_layout_grades_each_learner_and_restores_the_instructors_checks(tiny, tmp_path, capsys):
    notebooks, instructor, copy_ = tiny
    subs = tmp_path / "subs"
    _write(instructor, subs / "alice" / "01_tiny.ipynb")          # everything right
    _write(copy_, subs / "bob" / "01_tiny.ipynb")                 # nothing done
    wrong = nbformat.from_dict(copy_)
    wrong.cells[4].source = "xmin, xmax = -1.0, 3.0\nscale = (xmax - xmin) / 256\nzero_point = 64"   # wrong scale
    wrong.cells[7].source = instructor.cells[7].source   # right
    wrong.cells[5].source = "# CHECK 01-scale (1 point)\nassert True  # edited: gains nothing"
    _write(wrong, subs / "carol" / "01_tiny.ipynb")
    missing = nbformat.from_dict(instructor)
    del missing.cells[8]                                            # the quantize check deleted
    missing.cells[1].source += "\nprint(open('helper.txt').read())"  # the notebooks folder is the cwd
    _write(missing, subs / "dave" / "01_tiny.ipynb")
    out = tmp_path / "grades.csv"
    assert grade.main([str(subs), "--out", str(out), "--notebooks", str(notebooks)]) == 0
    printed = capsys.readouterr().out
    columns, rows = _csv(out)
    assert columns == ["learner", "notebook", "exercise", "points", "max_points", "passed", "message"]
    got = {(r["learner"], r["exercise"]): r for r in rows}
    assert len(rows) == 8 and {r["notebook"] for r in rows} == {"01_tiny"}
    assert [(got["alice", e]["points"], got["alice", e]["passed"]) for e in ("01-scale", "01-quantize")] == [
        ("1", "True"), ("2", "True")]
    assert got["alice", "01-scale"]["message"].startswith("Correct! S = 0.015686275, Z = 64")
    assert got["bob", "01-scale"] == {**got["bob", "01-scale"], "points": "0", "max_points": "1", "passed": "False",
                                      "message": "NameError: name 'scale' is not defined"}
    assert got["bob", "01-quantize"]["message"] == ("Not yet: the function is not written yet (it raises "
                                                    "NotImplementedError).")
    assert got["carol", "01-scale"]["passed"] == "False" and got["carol", "01-quantize"]["points"] == "2"
    assert got["carol", "01-scale"]["message"].startswith(
        "Not yet: scale 0.015625 differs from the observer's 0.015686275")
    assert "\nHint: the range is first widened to include 0" in got["carol", "01-scale"]["message"]
    assert got["dave", "01-scale"]["points"] == "1"
    assert got["dave", "01-quantize"]["passed"] == "False"
    assert "the check cell 01-quantize is missing from the submission" in got["dave", "01-quantize"]["message"]
    table = printed.split("\n")
    assert table[0].split() == ["learner", "01_tiny", "total"], printed
    assert [line.split() for line in table[2:6]] == [["alice", "3/3", "3/3"], ["bob", "0/3", "0/3"],
                                                     ["carol", "2/3", "2/3"], ["dave", "1/3", "1/3"]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".grades.csv")], "no temporary file left"


def test_flat_layout_names_the_learner_by_file_and_finds_the_notebook_by_its_grade_ids(tiny, tmp_path):
    notebooks, instructor, copy_ = tiny
    subs = tmp_path / "subs"
    _write(copy_, subs / "erin.ipynb")
    _write(instructor, subs / "01_tiny.ipynb")   # a notebook named as in the course: the learner is its stem
    rows = grade.grade(subs, notebooks, executed=tmp_path / "executed", progress=False)
    assert sorted({(r.learner, r.notebook) for r in rows}) == [("01_tiny", "01_tiny"), ("erin", "01_tiny")]
    fed_back = nbformat.read(str(tmp_path / "executed" / "erin" / "01_tiny.ipynb"), 4)
    assert "Not yet: the function is not written yet" in fed_back.cells[8].outputs[0]["text"]
    assert sum(r.points for r in rows if r.learner == "erin") == 0
    assert sum(r.points for r in rows if r.learner == "01_tiny") == 3


def test_clear_errors_before_anything_runs(tiny, tmp_path, capsys):
    notebooks, instructor, copy_ = tiny
    assert grade.main([str(tmp_path / "nowhere"), "--notebooks", str(notebooks)]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "alice").mkdir(parents=True)
    assert grade.main([str(tmp_path / "empty"), "--notebooks", str(notebooks)]) == 2
    assert "holds no notebook" in capsys.readouterr().err
    _write(instructor, tmp_path / "named" / "alice" / "homework.ipynb")   # grade ids would tell, but: a plain notebook
    _write(new_notebook(cells=[new_code_cell("print(1)")]), tmp_path / "named" / "bob" / "99_mystery.ipynb")
    _write(new_notebook(cells=[new_code_cell("print(1)")]), tmp_path / "named" / "carl.ipynb")
    out = tmp_path / "named.csv"
    assert grade.main([str(tmp_path / "named"), "--notebooks", str(notebooks), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown notebook(s)" in err and "99_mystery.ipynb" in err and "carl.ipynb" in err and "01_tiny.ipynb" in err
    assert "homework.ipynb" not in err, "found by its grade ids"
    assert not out.exists()
    with pytest.raises(grade.GradingError, match="the instructor notebooks cannot be read: .*holds no notebook"):
        grade.grade(tmp_path / "named", tmp_path / "empty")
    _write(instructor, tmp_path / "broken" / "alice" / "02_broken.ipynb")
    with pytest.raises(grade.GradingError, match=r"(?s)02_broken.ipynb in .* cannot grade.*02_broken.ipynb, cell 1 "
                                                 r"\(code.*is followed by its check cell"):
        grade.grade(tmp_path / "broken", notebooks)


def test_a_submission_that_cannot_be_read_gets_zero_with_the_reason(tiny, tmp_path):
    notebooks, _, _ = tiny
    (tmp_path / "subs" / "zoe").mkdir(parents=True)
    (tmp_path / "subs" / "zoe" / "01_tiny.ipynb").write_text("{ not json")
    rows = grade.grade(tmp_path / "subs", notebooks, progress=False)
    assert [(r.learner, r.points, r.passed) for r in rows] == [("zoe", 0, False), ("zoe", 0, False)]
    assert rows[0].message.startswith("the notebook could not be read")


def test_time_limits_per_cell_and_per_notebook_and_no_network(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("import socket, time\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
                      "except PermissionError as refused:\n    print(refused)"),
        new_code_cell("socket.getaddrinfo('example.org', 80)"),
        new_code_cell("listener = socket.create_server(('127.0.0.1', 0))\n"
                      "socket.create_connection(listener.getsockname(), timeout=5).close()\nprint('loopback ok')"),
        new_code_cell("time.sleep(60)"),
        new_code_cell("print('goes on after an interrupted cell')"),
        new_code_cell("while True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"),
        new_code_cell("print('never')"),
    ])
    env = grade.kernel_env(grade.write_network_guard(tmp_path / "guard"))
    start = time.monotonic()
    runs = grade.run_notebook(nb, tmp_path, cell_timeout=3, notebook_timeout=120, env=env)
    assert time.monotonic() - start < 60
    assert "network access is switched off while grading" in runs[0].stdout and runs[0].ok
    assert runs[1].error.startswith("PermissionError: network access is switched off")
    assert "'example.org'" in runs[1].error
    assert runs[2].ok and runs[2].stdout == "loopback ok\n"
    assert runs[3].error == "TimeoutError: the cell ran past the cell's time limit (3 s)."
    assert runs[4].ok and runs[4].stdout == "goes on after an interrupted cell\n"
    assert runs[5].error.startswith("TimeoutError")
    assert runs[6].status == "not run" and "cell 5 did not stop when interrupted" in runs[6].error
    nb.cells = nb.cells[:6]
    quick = grade.run_notebook(nb, tmp_path, cell_timeout=30, notebook_timeout=5, env=env)
    assert quick[3].error == "TimeoutError: the cell ran past the notebook's time limit (5 s)."
    assert [quick[i].status for i in (4, 5)] == ["not run"] * 2
    assert "the notebook's time limit (5 s) was reached" in quick[4].error


def test_summary_and_atomic_csv(tmp_path):
    rows = [grade.Row("amy", "01_a", "01-x", 1, 1, True, "Correct! ok"),
            grade.Row("amy", "02_b", "02-y", 0, 2, False, 'Not yet: "quoted", with a comma\nHint: two lines')]
    out = grade.write_csv(rows, tmp_path / "g.csv")
    assert _csv(out)[1][1]["message"] == 'Not yet: "quoted", with a comma\nHint: two lines'
    assert grade.summary(rows).split("\n")[2].split() == ["amy", "1/1", "0/2", "1/3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv"]


# ---------------------------------------------------------------------------------------------
# The real notebooks 01 and 02


def _names_bound(tree) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
    return list(dict.fromkeys(names))


def wrong_answer(source: str) -> str:
    """The solution cell answered wrongly, whatever the exercise: inside a def, the function returns
    None; at the top level, every name the solution binds is left None. Either is an answer of the
    right form's absence that every checker must refuse with its own 'Not yet:' sentence."""
    regions, _ = student._regions(source)
    begin, end, indent = regions[-1]
    lines = source.split("\n")
    tree = ast.parse(source)
    in_def = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.lineno <= begin + 1 <= n.end_lineno
                 for n in ast.walk(tree))
    if in_def:
        replacement = [indent + "return None"]
    else:
        region = "\n".join(line[len(indent):] for line in lines[begin + 1:end])
        replacement = lines[begin + 1:end] + [f"{indent}{name} = None" for name in _names_bound(ast.parse(region))]
    return "\n".join(lines[:begin] + replacement + lines[end + 1:])


def test_wrong_answer_makes_the_answer_absent():
    assert wrong_answer("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION") == \
        "def f(x):\n    return None"
    assert wrong_answer("a = 1\n### BEGIN SOLUTION\nscale, zp = 2, 3\n### END SOLUTION\nprint(a)") == \
        "a = 1\nscale, zp = 2, 3\nscale = None\nzp = None\nprint(a)"


@pytest.mark.skipif(not REAL, reason="notebooks 01 and 02 are not in notebooks/")
def test_grading_notebooks_01_and_02_instructor_student_and_one_wrong_answer(tmp_path, monkeypatch):
    """01: the instructor copy, the student copy and one wrong answer; 02: one wrong answer only (nbval
    already runs its instructor copy, and the bite test its student copy): four runs in all."""
    monkeypatch.setenv("QLIB_SMOKE", "1")
    subs, expected = tmp_path / "subs", {}
    for path in REAL:
        nb = student.read(path)
        parsed = student.parse(nb, path.name)
        if parsed.problems or not parsed.exercises:
            pytest.fail(f"{path.name} has no valid exercise to grade:\n" + "\n".join(parsed.problems))
        if path.name.startswith("01"):
            _write(nb, subs / "teacher" / path.name)
            _write(student.student_copy(nb, path.name, parsed), subs / "learner" / path.name)
        wrong = nbformat.from_dict(nb)
        target = parsed.exercises[-1]
        wrong.cells[target.solution].source = wrong_answer(wrong.cells[target.solution].source)
        _write(wrong, subs / "slip" / path.name)
        expected[path.stem] = (parsed, target.grade_id)
    start = time.monotonic()
    rows = grade.grade(subs, REAL[0].parent, progress=False)
    print(f"grading {sum(len(list(d.iterdir())) for d in subs.iterdir())} runs of notebooks "
          f"{', '.join(expected)}: {time.monotonic() - start:.1f} s")
    for stem, (parsed, slipped) in expected.items():
        mine = {(r.learner, r.exercise): r for r in rows if r.notebook == stem}
        learners = ("teacher", "learner", "slip") if stem.startswith("01") else ("slip",)
        assert len(mine) == len(learners) * len(parsed.exercises)
        for exercise in parsed.exercises:
            slip = mine["slip", exercise.grade_id]
            if exercise.grade_id == slipped:
                print(f"{slipped}, answered None: {slip.message}")
                assert not slip.passed and slip.points == 0 and slip.message.startswith("Not yet: "), slip
            else:
                assert slip.passed and slip.points == exercise.points and slip.message.startswith("Correct!"), slip
            if stem.startswith("01"):
                teacher, learner = mine["teacher", exercise.grade_id], mine["learner", exercise.grade_id]
                assert teacher.passed and teacher.points == exercise.points, teacher
                assert teacher.message.startswith("Correct!"), teacher
                assert not learner.passed and learner.points == 0 and learner.max_points == exercise.points, learner
