"""Student copies (issue 11.3) and the proof that every check bites (issue 11.4).

Parsing, validation and generation are tested on small synthetic notebooks, each defect refused
with its message; then the committed notebooks are validated; then THE BITE TEST generates the
student copy of every notebook and runs it cell by cell, errors allowed (QLIB_SMOKE=1): every
check cell must fail there (a check that passes without its solution is a defect), and no cell
may fail but solution cells and `# USES` cells. That the same check cells pass in the instructor
copy is proved by nbval, which runs every instructor notebook in the suite, and by the grader's
test (full marks on notebooks 01 and 02).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from qlib import grade, student
from qlib.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
BITE_CELL_TIMEOUT = 300          # as nbval in the suite
BITE_NOTEBOOK_TIMEOUT = 900


def _notebook(*cells):
    """A notebook from ('md' | 'code', source) pairs, stored as the course stores its notebooks."""
    made = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    return new_notebook(cells=made, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


SOLUTION_1 = ("xmin, xmax = -1.0, 3.0\n### BEGIN SOLUTION\nscale = (xmax - xmin) / 255\nzero_point = 64\n"
              "### END SOLUTION")
SOLUTION_2 = ("def my_quantize(x, scale, zero_point):\n"
              "    ### BEGIN SOLUTION\n"
              "    inverse = 1 / torch.tensor(scale, dtype=torch.float32)\n"
              "    return (torch.round(x * inverse) + zero_point).clamp(-128, 127).to(torch.int8)\n"
              "    ### END SOLUTION\n"
              "\n"
              "example = torch.tensor([0.5, -1.25])")


def good_cells():
    """A notebook 01 that follows the convention: two exercises, a hint, a `# USES` cell, and a
    markdown cell that quotes the markers (as notebook 00 does)."""
    return [
        ("md", "# 01 · Tiny\n\nExercises keep their solution between `### BEGIN SOLUTION`\nand\n### END SOLUTION"),
        ("code", "import torch\nfrom qlib import checks"),
        ("md", "**Exercise 1.1 (easy): the scale.**\n\nCompute the scale and zero point of [-1, 3]."),
        ("md", "<details><summary>Hint</summary>\n\n$S = (max - min) / 255$.\n\n</details>"),
        ("code", SOLUTION_1),
        ("code", "# CHECK 01-scale (1 point)\nassert checks.check_qparams(scale, zero_point, xmin, xmax)"),
        ("md", "**Exercise 1.2 (medium): quantize.**\n\nWrite `my_quantize`."),
        ("code", SOLUTION_2),
        ("code", "# CHECK 01-quantize (2 points)\nassert checks.check_quantize(my_quantize, torch.qint8)"),
        ("code", "# USES 01-quantize\nprint(my_quantize(example, 0.1, 0))"),
        ("md", "## Recap"),
    ]


def good(name="01_tiny.ipynb"):
    return _notebook(*good_cells()), name


def _with(changes: dict, remove=()):
    """good_cells() with some cells replaced ({index: (kind, source)}) and some removed."""
    cells = good_cells()
    for index, cell in changes.items():
        cells[index] = cell
    return _notebook(*[c for i, c in enumerate(cells) if i not in remove])


# ---------------------------------------------------------------------------------------------
# Parsing and generation


def test_parse_finds_each_exercise_and_its_cells():
    parsed = student.parse(*good())
    assert parsed.problems == []
    assert [(e.number, e.level, e.title, e.grade_id, e.points) for e in parsed.exercises] == [
        ("1.1", "easy", "the scale.", "01-scale", 1), ("1.2", "medium", "quantize.", "01-quantize", 2)]
    first, second = parsed.exercises
    assert (first.prompt, first.hint, first.solution, first.check) == (2, 3, 4, 5)
    assert (second.prompt, second.hint, second.solution, second.check) == (6, None, 7, 8)
    assert parsed.uses == {9: ("01-quantize",)} and parsed.max_points == 3


def test_student_copy_stubs_each_region_at_its_indentation_and_keeps_the_rest():
    nb, name = good()
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="hi\n")]
    nb.cells[1].execution_count = 3
    copy_ = student.student_copy(nb, name)
    assert copy_.cells[4].source == "xmin, xmax = -1.0, 3.0\n# YOUR CODE HERE\nraise NotImplementedError()"
    assert copy_.cells[7].source == ("def my_quantize(x, scale, zero_point):\n    # YOUR CODE HERE\n"
                                     "    raise NotImplementedError()\n\nexample = torch.tensor([0.5, -1.25])")
    # markdown untouched, even where it quotes the markers; other code cells unchanged
    for index in (0, 2, 3, 6, 10, 1, 5, 8, 9):
        assert copy_.cells[index].source == nb.cells[index].source, index
    assert all(c.outputs == [] and c.execution_count is None for c in copy_.cells if c.cell_type == "code")
    assert nb.cells[1].outputs and nb.cells[4].source == SOLUTION_1, "the instructor notebook is not modified"


def test_student_copy_carries_nbgrader_metadata_on_solution_and_check_cells_only():
    copy_ = student.student_copy(*good())
    assert copy_.cells[4].metadata["nbgrader"] == {
        "grade": False, "grade_id": "01-scale-answer", "locked": False, "schema_version": 3, "solution": True,
        "task": False}
    assert copy_.cells[8].metadata["nbgrader"] == {
        "grade": True, "grade_id": "01-quantize", "locked": True, "points": 2, "schema_version": 3,
        "solution": False, "task": False}
    assert copy_.cells[8].metadata["editable"] is False and copy_.cells[8].metadata["deletable"] is False
    marked = [i for i, c in enumerate(copy_.cells) if "nbgrader" in c.metadata]
    assert marked == [4, 5, 7, 8]
    nbformat.validate(copy_)


def test_several_regions_in_one_cell_and_indented_blocks():
    source = ("def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    ### END SOLUTION\n    return y\n\n"
              "with open('f') as h:\n        ### BEGIN SOLUTION\n        z = 2\n        ### END SOLUTION")
    assert student.stub_source(source) == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n    return y\n\n"
        "with open('f') as h:\n        # YOUR CODE HERE\n        raise NotImplementedError()")


def _problems(nb, name="01_tiny.ipynb"):
    return "\n".join(student.parse(nb, name).problems)


DEFECTS = {
    "solution cell without its check cell": (
        lambda: _with({}, remove={5}), r"cell 4 \(code.*is followed by its check cell"),
    "check cell after no solution cell": (
        lambda: _notebook(("code", "x = 1"),
                          ("code", "# CHECK 01-x (1 point)\nassert checks.check_qparams(1, 2, 3, 4)")),
        r"cell 1 \(code, starting \"# CHECK 01-x \(1 point\)\"\): a check cell comes right after the solution cell"),
    "grade id repeated in a notebook": (
        lambda: _with({8: ("code", "# CHECK 01-scale (2 points)\nassert checks.check_quantize(my_quantize)")}),
        r"cell 8 .*grade id '01-scale' is used twice in this notebook \(also at cell 5\)"),
    "grade id with capitals": (
        lambda: _with({5: ("code", "# CHECK 01-Scale (1 point)\nassert checks.check_qparams(scale, 0, 0, 1)")}),
        r"cell 5 .*grade id '01-Scale' is not of the form NN-short-name"),
    "grade id of another notebook": (
        lambda: _with({5: ("code", "# CHECK 02-scale (1 point)\nassert checks.check_qparams(scale, 0, 0, 1)")}),
        r"cell 5 .*starts with another notebook's number; ids of notebook 01 start with '01-'"),
    "BEGIN without END": (
        lambda: _with({4: ("code", "### BEGIN SOLUTION\nscale = 1")}),
        r"cell 4 .*line 1: `### BEGIN SOLUTION` is never closed"),
    "END without BEGIN": (
        lambda: _with({4: ("code", "scale = 1\n### END SOLUTION")}), r"cell 4 .*line 2: `### END SOLUTION` without a"),
    "nested BEGIN": (
        lambda: _with({4: ("code", "### BEGIN SOLUTION\n### BEGIN SOLUTION\nscale = 1\n### END SOLUTION")}),
        r"line 2: `### BEGIN SOLUTION` again before the `### END SOLUTION` of line 1"),
    "markers indented differently": (
        lambda: _with({4: ("code", "if True:\n    ### BEGIN SOLUTION\n    scale = 1\n### END SOLUTION")}),
        r"lines 2 and 4: `### BEGIN SOLUTION` and `### END SOLUTION` are indented differently"),
    "a near-miss marker": (
        lambda: _with({4: ("code", "## BEGIN SOLUTION\nscale = 1\n### END SOLUTION")}),
        r"line 1: `## BEGIN SOLUTION` looks like a solution marker but is not one"),
    "an empty region": (
        lambda: _with({4: ("code", "x = 1\n### BEGIN SOLUTION\n### END SOLUTION")}),
        r"lines 2-3: the region holds no solution"),
    "an assert in the solution cell": (
        lambda: _with({4: ("code", SOLUTION_1 + "\nassert checks.check_qparams(scale, zero_point, xmin, xmax)")}),
        r"cell 4 .*line 6: an assert in the solution cell.*\n.*line 6: a call to checks.check_qparams in the solution"),
    "code in the check cell": (
        lambda: _with({5: ("code", "# CHECK 01-scale (1 point)\nzero_point = 64\nassert checks.check_qparams(scale, "
                                   "zero_point, xmin, xmax)")}),
        r"cell 5 .*line 2: a check cell holds only `assert checks.check_xxx\(...\)` lines"),
    "a plain assert in the check cell": (
        lambda: _with({5: ("code", "# CHECK 01-scale (1 point)\nassert scale > 0")}),
        r"cell 5 .*line 2: a check cell holds only"),
    "a check cell that checks nothing": (
        lambda: _with({5: ("code", "# CHECK 01-scale (1 point)\n")}), r"cell 5 .*it checks nothing"),
    "a CHECK line without points": (
        lambda: _with({5: ("code", "# CHECK 01-scale\nassert checks.check_qparams(scale, 0, 0, 1)")}),
        r"cell 5 .*the first line of a check cell is exactly `# CHECK <grade_id> \(1 point\)`"),
    "a CHECK line with the wrong grammar": (
        lambda: _with({5: ("code", "# CHECK 01-scale (1 points)\nassert checks.check_qparams(scale, 0, 0, 1)")}),
        r"cell 5 .*write \(1 point\)"),
    "points that do not match the level": (
        lambda: _with({8: ("code", "# CHECK 01-quantize (3 points)\nassert checks.check_quantize(my_quantize)")}),
        r"cell 8 .*a medium exercise is worth 2 points \(easy 1, medium 2, hard 3\), not 3"),
    "exercises numbered out of order": (
        lambda: _with({6: ("md", "**Exercise 1.3 (medium): quantize.**")}),
        r"cell 6 .*this is the notebook's exercise 2: number it 1.2, not 1.3"),
    "an exercise numbered for another notebook": (
        lambda: _with({2: ("md", "**Exercise 2.1 (easy): the scale.**")}),
        r"cell 2 .*exercises of notebook 01 are numbered 1.k, not 2.k"),
    "a malformed prompt": (
        lambda: _with({2: ("md", "**Exercise 1.** Compute the scale.")}),
        r"cell 2 .*a prompt begins `\*\*Exercise N.k \(easy\|medium\|hard\): title.\*\*`(.|\n)*cell 4 .*a solution "
        r"cell comes right after its prompt"),
    "a prompt in the middle of a cell": (
        lambda: _with({2: ("md", "Some prose first.\n\n**Exercise 1.1 (easy): the scale.**")}),
        r"cell 2 .*a prompt begins its cell: put the text before `\*\*Exercise ...` in a markdown cell of its own"),
    "a prompt without its solution": (
        lambda: _with({}, remove={4, 5}), r"cell 2 .*a prompt is followed by its solution cell"),
    "a malformed hint": (
        lambda: _with({3: ("md", "<details><summary>Hint</summary>S = (max - min) / 255</details>")}),
        r"cell 3 .*a hint is exactly `<details><summary>Hint</summary>`"),
    "a hint away from its prompt": (
        lambda: _with({10: ("md", "<details><summary>Hint</summary>\n\nlater\n\n</details>")}),
        r"cell 10 .*a hint cell comes right after the prompt of its exercise"),
    "CHECK not on the first line": (
        lambda: _with({5: ("code", "# a comment\n# CHECK 01-scale (1 point)\n"
                                   "assert checks.check_qparams(scale, 0, 0, 1)")}),
        r"cell 5 .*line 2: `# CHECK 01-scale \(1 point\)` must be the cell's first line"),
    "USES naming no exercise": (
        lambda: _with({9: ("code", "# USES 01-nothing\nprint(1)")}), r"cell 9 .*`# USES 01-nothing` names no exercise"),
    "USES before its exercise": (
        lambda: _with({1: ("code", "# USES 01-quantize\nimport torch\nfrom qlib import checks")}),
        r"cell 1 .*`# USES 01-quantize` comes before that exercise"),
    "a student copy that would not parse": (
        lambda: _with({4: ("code", "scale = max(\n    ### BEGIN SOLUTION\n    1, 2\n    ### END SOLUTION\n)")}),
        r"cell 4 .*its student copy does not parse"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_is_refused_with_its_message(defect):
    make, message = DEFECTS[defect]
    nb = make()
    found = _problems(nb)
    assert re.search(message, found), f"{defect}: expected /{message}/ in:\n{found}"
    assert found.startswith("01_tiny.ipynb, cell ")
    with pytest.raises(student.ConventionError, match=r"01_tiny.ipynb breaks the exercise convention"):
        student.student_copy(nb, "01_tiny.ipynb")


def test_the_good_notebook_has_no_problem():
    assert _problems(good()[0]) == ""


def _folder(tmp_path: Path, notebooks: dict) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir(exist_ok=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, str(folder / name))
    return folder


def test_grade_ids_are_unique_across_the_course(tmp_path):
    cells = good_cells()
    cells[0] = ("md", "# 02 · Another")
    cells[2] = ("md", "**Exercise 2.1 (easy): the scale.**")
    cells[6] = ("md", "**Exercise 2.2 (medium): quantize.**")
    cells[8] = ("code", "# CHECK 02-quantize (2 points)\nassert checks.check_quantize(my_quantize, torch.qint8)")
    cells[9] = ("code", "# USES 02-quantize\nprint(1)")
    cells[5] = ("code", "# CHECK 01-scale (1 point)\nassert checks.check_qparams(scale, zero_point, xmin, xmax)")
    folder = _folder(tmp_path, {"01_tiny.ipynb": good()[0], "02_other.ipynb": _notebook(*cells)})
    with pytest.raises(student.ConventionError) as refused:
        student.validate_course(folder)
    text = str(refused.value)
    assert ("grade id '01-scale' is used more than once in the course (01_tiny.ipynb, cell 5; 02_other.ipynb, "
            "cell 5)") in text
    assert "02_other.ipynb, cell 5" in text and "starts with another notebook's number" in text


# ---------------------------------------------------------------------------------------------
# Writing the student folder


def test_python_m_qlib_student_writes_every_copy_and_a_manifest(tmp_path, capsys):
    plain = _notebook(("md", "# 00 · Set-up\n\nMarkers look like `### BEGIN SOLUTION`."), ("code", "print(1)"))
    folder = _folder(tmp_path, {"00_setup.ipynb": plain, "01_tiny.ipynb": good()[0]})
    out = tmp_path / "student"
    assert student.main(["--notebooks", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 exercise(s), 3 point(s): 01-scale, 01-quantize" in printed and "no exercise (copied as is)" in printed
    assert sorted(p.name for p in out.iterdir()) == [student.MANIFEST, "00_setup.ipynb", "01_tiny.ipynb"]
    assert nbformat.read(str(out / "00_setup.ipynb"), 4).cells == plain.cells
    assert "raise NotImplementedError()" in nbformat.read(str(out / "01_tiny.ipynb"), 4).cells[4].source
    manifest = json.loads((out / student.MANIFEST).read_text())["files"]
    assert set(manifest) == {"00_setup.ipynb", "01_tiny.ipynb"}
    assert oct(out.stat().st_mode & 0o777) != oct(0o700), "the folder is readable like any other"
    # a second run replaces unchanged copies; nothing is left beside the folder
    assert student.main(["--notebooks", str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks", "student"]


def test_a_learners_changed_copy_is_not_overwritten_without_force(tmp_path, capsys):
    folder = _folder(tmp_path, {"01_tiny.ipynb": good()[0]})
    out = tmp_path / "student"
    student.write_student_copies(out, folder)
    work = out / "01_tiny.ipynb"
    work.write_text(work.read_text().replace("# YOUR CODE HERE", "scale = 0.5"))
    assert student.main(["--notebooks", str(folder), "--out", str(out)]) == 1
    assert "changed since they were generated (01_tiny.ipynb)" in capsys.readouterr().err
    assert "scale = 0.5" in work.read_text()
    student.write_student_copies(out, folder, force=True)
    assert "scale = 0.5" not in work.read_text()


def test_a_folder_it_did_not_write_is_refused(tmp_path):
    folder = _folder(tmp_path, {"01_tiny.ipynb": good()[0]})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(student.StudentFolderError, match="did not write"):
        student.write_student_copies(out, folder)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_bad_notebook_stops_everything_before_a_file_is_written(tmp_path, capsys):
    folder = _folder(tmp_path, {"01_tiny.ipynb": good()[0], "02_bad.ipynb": _with({}, remove={5})})
    out = tmp_path / "student"
    assert student.main(["--notebooks", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "02_bad.ipynb, cell 4" in err and "is followed by its check cell" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["notebooks"]


def test_no_notebooks_is_a_clear_error(tmp_path):
    with pytest.raises(student.ConventionError, match="holds no notebook"):
        student.validate_course(tmp_path)
    with pytest.raises(student.ConventionError, match="is not a folder"):
        student.validate_course(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# The committed notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_follows_the_exercise_convention(path):
    problems = student.parse(student.read(path), path.name).problems
    assert not problems, "\n".join(problems)


def test_grade_ids_are_unique_in_the_committed_course():
    parsed = [student.parse(student.read(p), p.name) for p in NOTEBOOKS]
    repeated = [text for text in student.course_problems(parsed) if "more than once in the course" in text]
    assert not repeated, "\n".join(repeated)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "01" <= p.name[:2] <= "08"], ids=lambda p: p.name)
def test_notebooks_01_to_08_have_at_least_two_exercises(path):
    parsed = student.parse(student.read(path), path.name)
    assert len(parsed.exercises) >= 2, f"{path.name} has {len(parsed.exercises)} exercise(s) that follow the convention"


# ---------------------------------------------------------------------------------------------
# The bite test


@pytest.fixture(scope="module")
def bite_env(tmp_path_factory):
    """The kernel environment: the suite's smoke size, no network, the engine as set outside."""
    env = grade.kernel_env(grade.write_network_guard(tmp_path_factory.mktemp("guard")))
    env["QLIB_SMOKE"] = "1"
    return env


def bite_verdicts(nb, parsed: student.Parsed, runs: dict[int, grade.CellRun]) -> list[str]:
    """What is wrong with one run of a student copy: checks that pass, and cells that fail although
    they are neither a solution cell nor a `# USES` cell."""
    checks = {e.check: e for e in parsed.exercises}
    allowed = {e.solution for e in parsed.exercises} | set(parsed.uses)
    defects = []
    for index, run in sorted(runs.items()):
        if index in checks and run.ok:
            defects.append(f"check {checks[index].grade_id} (cell {index}) passes in the student copy, without "
                           f"its solution: it does not bite. It printed: {run.stdout.strip()[:300]!r}")
        elif index not in checks and index not in allowed and not run.ok:
            first = nb.cells[index].source.strip().split("\n", 1)[0][:60]
            defects.append(f"cell {index} ({first!r}) fails in the student copy: {run.error}. If it needs an "
                           "exercise's solution, start it with `# USES <grade_id>`; else make it independent.")
    missing = [e.grade_id for e in parsed.exercises if e.check not in runs]
    defects += [f"check {grade_id} was not run" for grade_id in missing]
    return defects


def test_bite_verdicts_name_each_defect():
    nb, name = good()
    parsed = student.parse(nb, name)
    ok = grade.CellRun(0, "ok", "Correct! fine")
    err = grade.CellRun(0, "error", "", "NameError: name 'x' is not defined")
    runs = {1: ok, 4: err, 5: err, 7: ok, 8: err, 9: err}
    assert bite_verdicts(nb, parsed, runs) == []
    runs.update({5: ok, 1: err})
    found = bite_verdicts(nb, parsed, runs)
    assert len(found) == 2 and "cell 1 ('import torch') fails in the student copy: NameError" in found[0]
    assert "check 01-scale (cell 5) passes in the student copy" in found[1] and "Correct! fine" in found[1]


BITE_TIMES: dict[str, float] = {}


def _has_exercises_or_problems(path) -> bool:
    parsed = student.parse(student.read(path), path.name)
    return bool(parsed.exercises or parsed.problems)


# A notebook without exercises (00) has no check to bite: its student copy is the instructor's,
# which nbval runs; a notebook that breaks the convention is kept, so that the test names it.
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if _has_exercises_or_problems(p)], ids=lambda p: p.name)
def test_every_check_bites_in_the_student_copy(path, bite_env, tmp_path):
    nb = student.read(path)
    parsed = student.parse(nb, path.name)
    if parsed.problems:
        pytest.fail(f"{path.name} breaks the exercise convention, so it has no student copy:\n"
                    + "\n".join(parsed.problems))
    copy_ = student.student_copy(nb, path.name, parsed)
    start = time.monotonic()
    runs = grade.run_notebook(copy_, grade.notebook_workdir(tmp_path, path.parent), BITE_CELL_TIMEOUT,
                              BITE_NOTEBOOK_TIMEOUT, bite_env)
    BITE_TIMES[path.name] = time.monotonic() - start
    print(f"bite test {path.name}: {len(parsed.exercises)} checks, {BITE_TIMES[path.name]:.1f} s")
    defects = bite_verdicts(copy_, parsed, runs)
    assert not defects, f"{path.name}:\n" + "\n".join(defects)
