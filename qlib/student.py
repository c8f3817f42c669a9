"""Student copies of the notebooks, generated from the instructor's, and the exercise convention
they rely on (checked here, so that a broken exercise is named before a class sees it).

An exercise is four consecutive cells:

- the prompt, a markdown cell beginning `**Exercise N.k (easy|medium|hard): title.**` (N: the
  notebook's number, k = 1, 2, ... in order);
- optionally a hint, the markdown cell `<details><summary>Hint</summary>\\n\\n...\\n\\n</details>`;
- the solution cell: code whose reference solution sits between lines that are exactly
  `### BEGIN SOLUTION` and `### END SOLUTION` (indented inside a def is fine), with no assert and
  no checker call;
- the check cell, whose first line is `# CHECK <grade_id> (<P> point[s])` (grade id `NN-name`,
  unique in the course; P = 1 easy, 2 medium, 3 hard), followed only by `assert checks.check_*(...)`.

A later cell that must use what a solution defined starts with `# USES <grade_id>`: it may fail
in the student copy. The student copy replaces each marked region with nbgrader's stub
(`# YOUR CODE HERE` / `raise NotImplementedError()` at the marker's indentation) and carries
nbgrader's cell metadata (schema 3), so that an instructor who uses nbgrader can take it as it
is; markdown is never touched (nbgrader's own ClearSolutions also rewrites the words inside
markdown, e.g. where notebook 00 explains the markers). nbgrader itself is not needed.

    python -m qlib.student [--out student/] [--force]      # or: make student
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .errors import QlibError
from .paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STUDENT_DIR = REPO_ROOT / "student"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
POINTS = {"easy": 1, "medium": 2, "hard": 3}
NBGRADER_SCHEMA = 3
# What `python -m qlib.student` leaves in its folder: each file's hash, so that a second run can
# tell a copy it wrote from a learner's work (which it refuses to overwrite without --force).
MANIFEST = ".qlib-student.json"

GRADE_ID = re.compile(r"[0-9]{2}-[a-z0-9]+(?:-[a-z0-9]+)*")
PROMPT = re.compile(r"\*\*Exercise (?P<n>\d+)\.(?P<k>\d+) \((?P<level>easy|medium|hard)\): (?P<title>[^*\n]+)\*\*")
HINT = re.compile(r"<details><summary>Hint</summary>\n\n(?P<body>.*\S.*)\n\n</details>", re.S)
CHECK = re.compile(r"# CHECK (?P<id>\S+) \((?P<points>\d+) (?P<unit>points?)\)")
USES = re.compile(r"# USES (?P<ids>\S.*)")
_NEAR_MARKER = re.compile(r"#+\s*(BEGIN|END)\s*SOLUTIONS?\s*#*", re.I)
_CHECK_FORM = "`# CHECK <grade_id> (1 point)` or `# CHECK <grade_id> (<P> points)`"


class ConventionError(QlibError, ValueError):
    """A notebook breaks the exercise convention; the message names notebook, cell and the fix."""


class StudentFolderError(QlibError, FileExistsError):
    """The output folder holds files this module did not write (a learner's work, perhaps)."""


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: where its cells are and what it is worth."""

    notebook: str          # the notebook's file name, e.g. "01_quantization_math.ipynb"
    number: str            # "1.2"
    level: str             # easy | medium | hard
    title: str
    grade_id: str          # "01-quantize"
    points: int
    prompt: int            # cell indices (0-based, as in nbformat's list of cells)
    hint: int | None
    solution: int
    check: int


@dataclass
class Parsed:
    """What `parse` finds in one notebook: its exercises, its `# USES` cells, what is wrong."""

    name: str
    exercises: list[Exercise] = field(default_factory=list)
    uses: dict[int, tuple[str, ...]] = field(default_factory=dict)   # cell index -> grade ids
    problems: list[str] = field(default_factory=list)

    @property
    def grade_ids(self) -> list[str]:
        return [exercise.grade_id for exercise in self.exercises]

    @property
    def max_points(self) -> int:
        return sum(exercise.points for exercise in self.exercises)


# ---------------------------------------------------------------------------------------------
# Reading cells


def _first_line(source: str) -> str:
    return source.split("\n", 1)[0].rstrip()


def _where(name: str, index: int, cell) -> str:
    """'01_x.ipynb, cell 25 (code, starting "xmin, xmax = ...")': findable in JupyterLab."""
    start = next((line.strip() for line in cell.source.split("\n") if line.strip()), "")
    start = start if len(start) <= 50 else start[:47] + "..."
    return f'{name}, cell {index} ({cell.cell_type}, starting "{start}")' if start else \
        f"{name}, cell {index} ({cell.cell_type}, empty)"


def _regions(source: str) -> tuple[list[tuple[int, int, str]], list[str]]:
    """The marked regions of a code cell as (begin line, end line, indentation), and what is wrong
    with its markers (unbalanced, nested, near-misses such as `## BEGIN SOLUTION`)."""
    regions, problems, open_at = [], [], None
    for number, line in enumerate(source.split("\n")):
        text, indent = line.strip(), line[:len(line) - len(line.lstrip())]
        if text == BEGIN:
            if open_at is not None:
                problems.append(f"line {number + 1}: `{BEGIN}` again before the `{END}` of line {open_at[0] + 1}; "
                                "regions cannot nest.")
            open_at = (number, indent)
        elif text == END:
            if open_at is None:
                problems.append(f"line {number + 1}: `{END}` without a `{BEGIN}` before it.")
                continue
            if indent != open_at[1]:
                problems.append(f"lines {open_at[0] + 1} and {number + 1}: `{BEGIN}` and `{END}` are indented "
                                "differently; indent both like the code they enclose.")
            if number == open_at[0] + 1:
                problems.append(f"lines {open_at[0] + 1}-{number + 1}: the region holds no solution.")
            regions.append((open_at[0], number, open_at[1]))
            open_at = None
        elif _NEAR_MARKER.fullmatch(text):
            problems.append(f"line {number + 1}: `{text}` looks like a solution marker but is not one; a marker "
                            f"line is exactly `{BEGIN}` or `{END}`.")
    if open_at is not None:
        problems.append(f"line {open_at[0] + 1}: `{BEGIN}` is never closed by `{END}`.")
    return regions, problems


def stub_source(source: str) -> str:
    """`source` with each marked region replaced by nbgrader's stub at the marker's indentation."""
    regions, problems = _regions(source)
    if problems:
        raise ConventionError("; ".join(problems))
    return _stub(source, regions)


def _stub(source: str, regions) -> str:
    lines = source.split("\n")
    for begin, end, indent in reversed(regions):
        lines[begin:end + 1] = [indent + STUB[0], indent + STUB[1]]
    return "\n".join(lines)


def _python(source: str):
    """The cell's syntax tree (IPython magics translated first), or the SyntaxError."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        source = TransformerManager().transform_cell(source)
    except Exception:  # no IPython, or a transform it cannot do: parse the text as it is
        pass
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        return exc


def _is_checker_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("check_")
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks")


def _solution_problems(source: str) -> list[str]:
    tree = _python(source)
    if isinstance(tree, SyntaxError):
        return [f"it does not parse as Python (line {tree.lineno}: {tree.msg})."]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            problems.append(f"line {node.lineno}: an assert in the solution cell; asserts belong in the check cell "
                            "after it (the student copy keeps the solution cell's code outside the markers).")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks"):
            problems.append(f"line {node.lineno}: a call to checks.{node.func.attr} in the solution cell; move it to "
                            "the check cell.")
    regions, marker_problems = _regions(source)
    stub = None if marker_problems else _python(_stub(source, regions))
    if isinstance(stub, SyntaxError):
        problems.append(f"its student copy does not parse (line {stub.lineno}: {stub.msg}); put the markers at "
                        "the indentation of the code they enclose, around whole statements.")
    return problems


def _check_problems(source: str) -> list[str]:
    tree = _python(source)
    if isinstance(tree, SyntaxError):
        return [f"it does not parse as Python (line {tree.lineno}: {tree.msg})."]
    if not tree.body:
        return ["it checks nothing: after its first line it needs `assert checks.check_xxx(...)`."]
    return [f"line {node.lineno}: a check cell holds only `assert checks.check_xxx(...)` lines (anything "
            "else would be missing where the cell is not run, and the grader restores this cell from the "
            "instructor's copy)." for node in tree.body
            if not (isinstance(node, ast.Assert) and _is_checker_call(node.test))]


# ---------------------------------------------------------------------------------------------
# Parsing and validating one notebook


def _notebook_number(name: str) -> str | None:
    match = re.match(r"(\d\d)_", name)
    return match.group(1) if match else None


def parse(nb, name: str) -> Parsed:
    """The exercises of notebook `nb` (file name `name`) and every way it breaks the convention.

    Never raises on a bad notebook: the problems are listed, one sentence each, naming the cell.
    """
    parsed = Parsed(name)
    cells = nb.cells
    number = _notebook_number(name)

    found: list[tuple[int, str]] = []

    def problem(index: int, text: str) -> None:
        found.append((index, f"{_where(name, index, cells[index])}: {text}"))

    kinds = {}   # index -> "prompt" | "hint" | "solution" | "check" | "uses"
    prompts, checks = {}, {}
    for index, cell in enumerate(cells):
        first = _first_line(cell.source)
        if cell.cell_type == "markdown":
            if first.startswith("**Exercise"):
                match = PROMPT.match(first)
                if match:
                    kinds[index], prompts[index] = "prompt", match
                else:
                    problem(index, "a prompt begins `**Exercise N.k (easy|medium|hard): title.**` (N the notebook's "
                            "number, k = 1, 2, ...).")
            elif re.search(r"^\*\*Exercise \d", cell.source, re.M):
                problem(index, "a prompt begins its cell: put the text before `**Exercise ...` in a markdown cell of "
                        "its own, so that the prompt sits right before its hint or solution cell.")
                line = re.search(r"^\*\*Exercise \d.*$", cell.source, re.M).group(0)
                if PROMPT.match(line):   # read it as the prompt all the same, so that nothing else is misread
                    kinds[index], prompts[index] = "prompt", PROMPT.match(line)
            elif cell.source.lstrip().startswith("<details"):
                if HINT.fullmatch(cell.source.strip()):
                    kinds[index] = "hint"
                elif "Hint" in cell.source.split("\n", 1)[0]:
                    problem(index, "a hint is exactly `<details><summary>Hint</summary>`, an empty line, the hint in "
                            "markdown, an empty line, `</details>`.")
            continue
        if cell.cell_type != "code":
            continue
        regions, marker_problems = _regions(cell.source)
        for text in marker_problems:
            problem(index, text)
        for line_number, line in enumerate(cell.source.split("\n")[1:], start=2):
            if line.strip().startswith(("# CHECK", "# USES")):
                problem(index, f"line {line_number}: `{line.strip()}` must be the cell's first line.")
        if first.startswith("# CHECK"):
            match = CHECK.fullmatch(first)
            if regions:
                problem(index, "a check cell holds no solution markers: the solution goes in the cell before it.")
            if not match:
                problem(index, f"the first line of a check cell is exactly {_CHECK_FORM}.")
                kinds[index] = "check"
                continue
            kinds[index], checks[index] = "check", match
            for text in _check_problems(cell.source):
                problem(index, text)
        elif first.startswith("# USES"):
            kinds[index] = "uses"
            match = USES.fullmatch(first)
            ids = tuple(part for part in re.split(r"[\s,]+", match.group("ids")) if part) if match else ()
            if not ids:
                problem(index, "the first line of such a cell is `# USES <grade_id>`.")
            parsed.uses[index] = ids
            if regions:
                problem(index, "a `# USES` cell holds no solution markers.")
        elif regions or marker_problems:
            kinds[index] = "solution"
            if regions:
                for text in _solution_problems(cell.source):
                    problem(index, text)

    def kind(index: int):
        return kinds.get(index) if 0 <= index < len(cells) else None

    # Every solution cell has its prompt (and optional hint) before it and its check cell after it.
    counter, seen_ids = 0, {}
    for index in sorted(i for i, k in kinds.items() if k == "solution"):
        hint = index - 1 if kind(index - 1) == "hint" else None
        prompt = (hint if hint is not None else index) - 1
        if kind(prompt) != "prompt":
            problem(index, "a solution cell comes right after its prompt, the markdown cell `**Exercise N.k "
                    "(level): title.**` (or after the prompt's hint cell).")
        if kind(index + 1) != "check":
            problem(index, f"a solution cell is followed by its check cell, the code cell whose first line is "
                    f"{_CHECK_FORM}.")
        if kind(prompt) != "prompt" or index + 1 not in checks:
            continue
        counter += 1
        match, check = prompts[prompt], checks[index + 1]
        grade_id, points, level = check.group("id"), int(check.group("points")), match.group("level")
        if number is not None and match.group("n") != str(int(number)):
            problem(prompt, f"exercises of notebook {number} are numbered {int(number)}.k, not {match.group('n')}.k.")
        if match.group("k") != str(counter):
            problem(prompt, f"this is the notebook's exercise {counter}: number it {int(number or 0) or 'N'}."
                    f"{counter}, not {match.group('n')}.{match.group('k')}.")
        if not GRADE_ID.fullmatch(grade_id):
            problem(index + 1, f"grade id {grade_id!r} is not of the form NN-short-name (the notebook's two-digit "
                    "number, then lowercase letters, digits and single hyphens).")
        elif number is not None and not grade_id.startswith(number + "-"):
            problem(index + 1, f"grade id {grade_id!r} starts with another notebook's number; ids of notebook "
                    f"{number} start with '{number}-'.")
        if grade_id in seen_ids:
            problem(index + 1, f"grade id {grade_id!r} is used twice in this notebook (also at cell "
                    f"{seen_ids[grade_id]}).")
        seen_ids.setdefault(grade_id, index + 1)
        if points != POINTS[level]:
            problem(index + 1, f"a {level} exercise is worth {POINTS[level]} point{'s' * (POINTS[level] > 1)} (easy 1, "
                    f"medium 2, hard 3), not {points}.")
        if check.group("unit") != ("point" if points == 1 else "points"):
            problem(index + 1, f"write ({points} {'point' if points == 1 else 'points'}).")
        parsed.exercises.append(Exercise(name, f"{match.group('n')}.{match.group('k')}", level,
                                         match.group("title").strip(), grade_id, points, prompt, hint, index,
                                         index + 1))

    for index, k in sorted(kinds.items()):
        if k == "check" and kind(index - 1) != "solution":
            problem(index, "a check cell comes right after the solution cell it checks (the code cell with "
                    f"`{BEGIN}` / `{END}`).")
        elif k == "prompt" and not (kind(index + 1) == "solution" or
                                    (kind(index + 1) == "hint" and kind(index + 2) == "solution")):
            problem(index, "a prompt is followed by its solution cell (the code cell with the markers), or by a "
                    "hint cell and then the solution cell.")
        elif k == "hint" and kind(index - 1) != "prompt":
            problem(index, "a hint cell comes right after the prompt of its exercise.")
    for index, ids in sorted(parsed.uses.items()):
        for grade_id in ids:
            earlier = [e for e in parsed.exercises if e.grade_id == grade_id]
            if not earlier:
                problem(index, f"`# USES {grade_id}` names no exercise of this notebook "
                        f"(its grade ids: {', '.join(parsed.grade_ids) or 'none'}).")
            elif earlier[0].check > index:
                problem(index, f"`# USES {grade_id}` comes before that exercise (cell {earlier[0].solution}).")
    parsed.problems = [text for _, text in sorted(found, key=lambda item: item[0])]
    return parsed


def read(path: Path):
    """The notebook at `path` (nbformat 4), or a ConventionError naming the file and why not."""
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise ConventionError(f"{path}: cannot be read as a notebook ({type(exc).__name__}: {exc}).") from None


def notebook_paths(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course's notebooks in `folder`, in course order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConventionError(f"{folder} is not a folder; pass the folder of the instructor notebooks.")
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise ConventionError(f"{folder} holds no notebook (*.ipynb); pass the folder of the instructor notebooks.")
    return paths


def course_problems(parsed: list[Parsed]) -> list[str]:
    """Each notebook's problems, plus grade ids repeated across notebooks."""
    problems = [text for p in parsed for text in p.problems]
    owners: dict[str, list[str]] = {}
    for p in parsed:
        for exercise in p.exercises:
            owners.setdefault(exercise.grade_id, []).append(f"{p.name}, cell {exercise.check}")
    problems += [f"grade id {grade_id!r} is used more than once in the course ({'; '.join(where)}): grade ids are "
                 "unique, so that a grade names one exercise." for grade_id, where in owners.items() if len(where) > 1]
    return problems


def validate_course(folder: Path = NOTEBOOKS_DIR) -> dict[str, Parsed]:
    """Parse every notebook of `folder`; raise one ConventionError listing every problem of the course."""
    parsed = [parse(read(path), path.name) for path in notebook_paths(folder)]
    problems = course_problems(parsed)
    if problems:
        raise ConventionError(f"{len(problems)} problem(s) with the exercise convention:\n"
                              + "\n".join(f"- {text}" for text in problems))
    return {p.name: p for p in parsed}


# ---------------------------------------------------------------------------------------------
# The student copy


def nbgrader_metadata(grade_id: str, points: int | None = None, solution: bool = False) -> dict:
    """nbgrader's cell metadata (schema 3) for a solution cell or for a graded, locked check cell."""
    if solution:
        return {"grade": False, "grade_id": f"{grade_id}-answer", "locked": False,
                "schema_version": NBGRADER_SCHEMA, "solution": True, "task": False}
    return {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
            "schema_version": NBGRADER_SCHEMA, "solution": False, "task": False}


def student_copy(nb, name: str, parsed: Parsed | None = None):
    """The student copy of instructor notebook `nb`: solutions stubbed, nbgrader metadata on the
    solution and check cells (check cells also locked in JupyterLab), outputs stripped, markdown
    untouched. Raises ConventionError if the notebook breaks the convention."""
    parsed = parsed or parse(nb, name)
    if parsed.problems:
        raise ConventionError(f"{name} breaks the exercise convention:\n"
                              + "\n".join(f"- {text}" for text in parsed.problems))
    copy_ = copy.deepcopy(nb)
    for cell in copy_.cells:
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    for exercise in parsed.exercises:
        solution, check = copy_.cells[exercise.solution], copy_.cells[exercise.check]
        solution.source = stub_source(solution.source)
        solution.metadata["nbgrader"] = nbgrader_metadata(exercise.grade_id, solution=True)
        check.metadata["nbgrader"] = nbgrader_metadata(exercise.grade_id, exercise.points)
        check.metadata["editable"], check.metadata["deletable"] = False, False
    return copy_


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _refuse_to_overwrite_work(out: Path) -> None:
    """Refuse to replace `out` if it holds anything but unchanged copies this module wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise StudentFolderError(f"{out} exists and is not a folder; pass another --out.")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST
                   and ".ipynb_checkpoints" not in p.relative_to(out).parts)
    try:
        written = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if written is None and files:
        raise StudentFolderError(f"{out} already holds files that python -m qlib.student did not write (e.g. "
                                 f"{files[0].name}); move them away, pass another --out, or pass --force to "
                                 "replace the folder.")
    changed = [p.relative_to(out).as_posix() for p in files
               if written.get(p.relative_to(out).as_posix()) != _sha256(p)]
    if changed:
        raise StudentFolderError(f"{out} holds files changed since they were generated ({', '.join(changed)}): a "
                                 "learner's work, perhaps. Move them away, pass another --out, or pass --force "
                                 "to replace the folder.")


def write_student_copies(out: Path = STUDENT_DIR, notebooks: Path = NOTEBOOKS_DIR,
                         force: bool = False) -> dict[str, Parsed]:
    """Write the student copy of every notebook of `notebooks` into `out`, all or nothing.

    The course is validated first; the copies are written to a temporary folder beside `out`, which
    then replaces `out` by renaming, so `out` never holds a half-written file. Returns each
    notebook's exercises.
    """
    course = validate_course(notebooks)
    out = Path(out).absolute()
    if not force:
        _refuse_to_overwrite_work(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's folder is private; the copies are not
    try:
        manifest = {}
        for name, parsed in course.items():
            target = staging / name
            nbformat.write(student_copy(read(Path(notebooks) / name), name, parsed), str(target))
            manifest[name] = _sha256(target)
        (staging / MANIFEST).write_text(json.dumps({"written_by": "python -m qlib.student", "files": manifest},
                                                   indent=1) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return course


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.student", description=(
        "Write the student copy of every notebook: solutions replaced by nbgrader's stub, nbgrader "
        "cell metadata on solution and check cells, outputs stripped."))
    parser.add_argument("--out", type=Path, default=STUDENT_DIR,
                        help="output folder (default: student/ in the repository)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR,
                        help="instructor notebooks (default: notebooks/)")
    parser.add_argument("--force", action="store_true", help="replace the output folder even if it holds changed files")
    args = parser.parse_args(argv)
    try:
        course = write_student_copies(args.out, args.notebooks, args.force)
    except QlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = 0
    for name, parsed in course.items():
        total += len(parsed.exercises)
        detail = (f"{len(parsed.exercises)} exercise(s), {parsed.max_points} point(s): {', '.join(parsed.grade_ids)}"
                  if parsed.exercises else "no exercise (copied as is)")
        print(f"{args.out / name}  {detail}")
    print(f"{len(course)} student copies, {total} exercises, written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
