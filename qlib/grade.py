"""The autograder: run each submitted notebook and grade its check cells.

    python -m qlib.grade SUBMISSIONS_DIR [--out grades.csv] [--timeout SECONDS]

SUBMISSIONS_DIR holds one sub-folder per learner (`alice/01_quantization_math.ipynb`: the learner
is the folder's name, the notebook is named as in notebooks/), or the notebooks themselves
(`alice.ipynb`: the learner is the file name, the notebook is found from its grade ids). Each
submission runs in a fresh kernel of this Python (the venv that holds qlib), in a temporary copy
of the notebooks folder, cell by cell with errors allowed, under a time limit per cell and per
notebook; QLIB_SMOKE comes from the environment. The check cells graded are the instructor's:
each is restored from the instructor notebook by its grade id (as nbgrader does, so editing a
check away gains nothing), and a check cell missing from the submission counts as failed.

One CSV row per learner and exercise: `learner, notebook, exercise, points, max_points, passed,
message`; `passed` means the check cell ran without error, and `message` is what the checker
printed (`Not yet: ...`, `Hint: ...`), or the last line of the exception the cell raised.

No network: the kernel starts with a `sitecustomize` on its PYTHONPATH that refuses every socket
connection and name lookup to anything but this machine (the kernel itself talks to this process
over loopback). That stops a notebook that would download something, it is no sandbox: a
submission's code runs with your permissions, as under nbgrader. Grade untrusted work inside a
container or a virtual machine without network. Nor does restoring the check cells stop a learner
who sets out to cheat (their code runs in the kernel the checks run in, as with nbgrader):
`--executed FOLDER` keeps every executed submission, to read when a grade surprises you.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import student
from .errors import QlibError

COLUMNS = ("learner", "notebook", "exercise", "points", "max_points", "passed", "message")
NOTEBOOK_TIMEOUT = 900   # seconds per notebook: each runs in about two minutes at full size
CELL_TIMEOUT = 300       # seconds per cell, as nbval in the test suite
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class GradingError(QlibError, ValueError):
    """The submissions cannot be graded as given (no folder, no notebook, an unknown notebook)."""


# ---------------------------------------------------------------------------------------------
# Running a notebook


_GUARD = '''"""Installed by qlib.grade: no network while a submission runs (loopback stays open)."""
import ipaddress as _ipaddress
import socket as _socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(host):
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0].lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return _ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(host):
    raise PermissionError(f"network access is switched off while grading (qlib.grade): {host!r} is not this "
                          "machine. Exercises need no network: use the data and checkpoints the course provides.")


def _check_address(address):
    if isinstance(address, tuple) and address and not _is_local(address[0]):
        _refuse(address[0])


def _is_ip(sock):
    return sock.family in (_socket.AF_INET, _socket.AF_INET6)


_connect, _connect_ex, _sendto = _socket.socket.connect, _socket.socket.connect_ex, _socket.socket.sendto


def connect(self, address):
    if _is_ip(self):
        _check_address(address)
    return _connect(self, address)


def connect_ex(self, address):
    if _is_ip(self):
        _check_address(address)
    return _connect_ex(self, address)


def sendto(self, *args):
    if _is_ip(self) and len(args) >= 2:
        _check_address(args[-1])
    return _sendto(self, *args)


_socket.socket.connect, _socket.socket.connect_ex, _socket.socket.sendto = connect, connect_ex, sendto
_getaddrinfo = _socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


_socket.getaddrinfo = getaddrinfo


def _chain():
    """Run the sitecustomize this one shadows, if the interpreter has one."""
    import importlib.machinery
    import importlib.util
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
'''


def write_network_guard(folder: Path) -> Path:
    """Write the no-network `sitecustomize.py` into `folder`; returns the folder (for PYTHONPATH)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_GUARD)
    return folder


def kernel_env(guard: Path | None = None) -> dict:
    """This process's environment (QLIB_SMOKE and the rest) with the network guard first on PYTHONPATH."""
    env = dict(os.environ)
    if guard is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(guard), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _kernel_manager_class():
    """A kernel manager that starts ipykernel in this very Python, whatever kernels are installed
    (a learner's notebook may name another kernel; qlib lives in this one)."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    class Manager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _default_spec_manager(self):
            return ThisPython()

    return Manager


@dataclass
class CellRun:
    """What running one code cell gave: `status` is 'ok', 'error' or 'not run'."""

    index: int
    status: str
    stdout: str = ""
    error: str = ""      # "NameError: name 'x' is not defined", or why the cell was not run

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _error_line(ename: str, evalue: str) -> str:
    evalue = _ANSI.sub("", evalue or "").strip()
    last = evalue.splitlines()[-1] if evalue else ""
    return f"{ename}: {last}" if last else ename


def run_notebook(nb, cwd: Path, cell_timeout: int = CELL_TIMEOUT, notebook_timeout: int = NOTEBOOK_TIMEOUT,
                 env: dict | None = None) -> dict[int, CellRun]:
    """Run `nb`'s code cells in order in a fresh kernel started in `cwd`, errors allowed; returns
    each code cell's run by index (outputs are written into `nb`).

    A cell past `cell_timeout` is interrupted and reported as a TimeoutError, and the next cells
    still run; once `notebook_timeout` is spent, or if the kernel dies, the cells left are 'not run'.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    replies: dict[int, dict] = {}
    client = NotebookClient(nb, timeout=cell_timeout, allow_errors=True, interrupt_on_timeout=True,
                            kernel_name="python3", kernel_manager_class=_kernel_manager_class(),
                            resources={"metadata": {"path": str(cwd)}}, record_timing=False,
                            shutdown_kernel="immediate",  # its state is thrown away; a stuck one is killed
                            on_cell_executed=lambda cell, cell_index, execute_reply: replies.update(
                                {cell_index: execute_reply["content"]}))
    runs: dict[int, CellRun] = {}
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    stop = ""
    with client.setup_kernel(env=env if env is not None else kernel_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL):
        deadline = time.monotonic() + notebook_timeout   # from the kernel's start, not its launch
        for index in code:
            cell = nb.cells[index]
            left = deadline - time.monotonic()
            if stop or left < 1:
                stop = stop or f"not run: the notebook's time limit ({notebook_timeout} s) was reached."
                runs[index] = CellRun(index, "not run", error=stop)
                continue
            limit = max(1, int(min(cell_timeout, left)))
            whose = "cell" if limit == cell_timeout else "notebook"
            client.timeout = limit
            client.error_on_timeout = {"ename": "TimeoutError", "evalue": f"the cell ran past the {whose}'s time "
                                       f"limit ({cell_timeout if whose == 'cell' else notebook_timeout} s).",
                                       "traceback": []}
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                runs[index] = CellRun(index, "error", _stdout(cell), "DeadKernelError: the kernel died while "
                                      "running this cell (out of memory, or the process exited).")
                stop = "not run: the kernel died at an earlier cell."
                continue
            except CellTimeoutError:  # not raised with interrupt_on_timeout, kept for safety
                runs[index] = CellRun(index, "error", _stdout(cell), f"TimeoutError: the cell ran past {limit} s.")
                stop = "not run: an earlier cell could not be interrupted."
                continue
            reply = replies.pop(index, None) or {}
            if not cell.source.strip():
                runs[index] = CellRun(index, "ok")
            elif reply.get("status") == "error":
                runs[index] = CellRun(index, "error", _stdout(cell), _error_line(reply.get("ename", "Error"),
                                                                                 reply.get("evalue", "")))
                if reply.get("ename") == "TimeoutError" and whose == "notebook":
                    stop = f"not run: the notebook's time limit ({notebook_timeout} s) was reached."
                elif (reply.get("ename") == "TimeoutError"
                      and not _responds(client, deadline, min(10, cell_timeout + 2))):
                    stop = f"not run: cell {index} did not stop when interrupted at its time limit."
            else:
                runs[index] = CellRun(index, "ok", _stdout(cell))
    return runs


def _responds(client, deadline: float, patience: int = 10) -> bool:
    """Whether the kernel runs a trivial cell again after an interrupt (a loop that swallows
    KeyboardInterrupt keeps it busy: every later cell would time out in turn)."""
    probe = nbformat.v4.new_code_cell("pass")
    replies = {}
    hook, client.on_cell_executed = client.on_cell_executed, lambda cell, cell_index, execute_reply: replies.update(
        reply=execute_reply["content"])
    client.timeout = max(1, int(min(patience, deadline - time.monotonic())))
    try:
        client.execute_cell(probe, -1)
    except Exception:
        return False
    finally:
        client.on_cell_executed = hook
    return replies.get("reply", {}).get("status") == "ok"


def notebook_workdir(into: Path, notebooks: Path = student.NOTEBOOKS_DIR) -> Path:
    """A fresh copy of the notebooks folder under `into`, for a kernel's working directory (the
    notebooks' relative paths work there, and what a submission writes stays there)."""
    target = Path(into) / "notebooks"
    shutil.copytree(notebooks, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return target


# ---------------------------------------------------------------------------------------------
# Finding and preparing submissions


@dataclass
class Submission:
    learner: str
    path: Path
    notebook: str            # the instructor notebook's file name
    nb: object = None        # the notebook read, or None if it could not be read
    problem: str = ""        # why it could not be read


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _check_ids(cell) -> list[str]:
    """The grade ids of a submitted check cell: nbgrader's metadata, or its `# CHECK` line."""
    ids = []
    if cell.get("cell_type") != "code":
        return ids
    meta = _nbgrader(cell)
    if meta.get("grade") and isinstance(meta.get("grade_id"), str):
        ids.append(meta["grade_id"])
    match = student.CHECK.fullmatch(student._first_line(cell.get("source", "")))
    if match:
        ids.append(match.group("id"))
    return ids


def _grade_ids(cell) -> list[str]:
    """Every grade id a submitted cell carries (a solution cell's '<id>-answer' counts as <id>)."""
    answer = _nbgrader(cell).get("grade_id")
    return _check_ids(cell) + ([answer.removesuffix("-answer")] if isinstance(answer, str) else [])


def _read_submission(path: Path):
    try:
        return nbformat.read(str(path), as_version=4), ""
    except Exception as exc:
        return None, f"the notebook could not be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})."


def find_submissions(folder: Path, course: dict[str, student.Parsed]) -> list[Submission]:
    """Every submitted notebook of `folder`, with its learner and the instructor notebook it answers."""
    folder = Path(folder)
    if not folder.exists():
        raise GradingError(f"{folder} does not exist; pass the folder of submissions (one sub-folder per learner, "
                           "or the learners' notebooks themselves).")
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder; pass the folder that holds the submissions.")
    visible = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    found = [(p.stem, p, True) for p in visible if p.is_file() and p.suffix == ".ipynb"]
    found += [(d.name, p, False) for d in visible if d.is_dir()
              for p in sorted(d.glob("*.ipynb")) if not p.name.startswith(".")]
    if not found:
        raise GradingError(f"{folder} holds no notebook: looked for {folder}/*.ipynb and {folder}/<learner>/*.ipynb.")
    owner = {grade_id: name for name, parsed in course.items() for grade_id in parsed.grade_ids}
    submissions, unknown, seen = [], [], {}
    for learner, path, flat in found:
        nb, problem = _read_submission(path)
        notebook = path.name if path.name in course else None
        if notebook is None and nb is not None:
            names = {owner[i] for cell in nb.cells for i in _grade_ids(cell) if i in owner}
            notebook = names.pop() if len(names) == 1 else None
        if notebook is None:
            why = ("no check cell whose grade id names a notebook" if flat else
                   "no file of that name in the course, and no check cell of one notebook")
            unknown.append(f"{path} ({problem or why})")
            continue
        key = (learner, notebook)
        if key in seen:
            raise GradingError(f"{seen[key]} and {path} are both {learner}'s {notebook}; keep one.")
        seen[key] = path
        submissions.append(Submission(learner, path, notebook, nb, problem))
    if unknown:
        raise GradingError("unknown notebook(s): " + "; ".join(unknown) + f". Name each submission as in the course "
                           f"({', '.join(sorted(course))}) inside a folder named after the learner, or submit the "
                           "student copy with its check cells.")
    return submissions


def prepare(nb, instructor, parsed: student.Parsed):
    """The notebook to run: `nb` with outputs cleared and each check cell's source restored from the
    instructor notebook, by grade id. Returns it and {grade id: cell index, or None if missing}."""
    import copy

    nb = copy.deepcopy(nb)
    located: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code":
            cell.outputs, cell.execution_count = [], None
            for grade_id in _check_ids(cell):
                located.setdefault(grade_id, index)
    graded = {}
    for exercise in parsed.exercises:
        index = located.get(exercise.grade_id)
        graded[exercise.grade_id] = index
        if index is not None:
            nb.cells[index].source = instructor.cells[exercise.check].source
    return nb, graded


# ---------------------------------------------------------------------------------------------
# Grading


@dataclass
class Row:
    learner: str
    notebook: str
    exercise: str
    points: int
    max_points: int
    passed: bool
    message: str

    def as_list(self) -> list:
        return [self.learner, self.notebook, self.exercise, self.points, self.max_points, self.passed, self.message]


def _verdict(run: CellRun | None, grade_id: str) -> tuple[bool, str]:
    if run is None:
        return False, (f"the check cell {grade_id} is missing from the submission (deleted, or its first line "
                       "changed); it counts as failed.")
    printed = run.stdout.strip()
    if run.ok:
        return True, printed
    if run.status == "not run":
        return False, run.error
    if run.error == "AssertionError" and printed:   # the checker said why; the bare assert adds nothing
        return False, printed
    return False, "\n".join(filter(None, [printed, run.error]))


def grade_submission(submission: Submission, course: dict[str, student.Parsed], notebooks: Path,
                     scratch: Path, timeout: int, cell_timeout: int, env: dict,
                     executed: Path | None = None) -> list[Row]:
    """One submission's rows (one per exercise of its notebook)."""
    parsed = course[submission.notebook]

    def rows(verdicts: dict[str, tuple[bool, str]]) -> list[Row]:
        return [Row(submission.learner, Path(submission.notebook).stem, e.grade_id,
                    e.points if verdicts[e.grade_id][0] else 0, e.points, *verdicts[e.grade_id])
                for e in parsed.exercises]

    if submission.nb is None:
        return rows({e.grade_id: (False, submission.problem) for e in parsed.exercises})
    instructor = student.read(Path(notebooks) / submission.notebook)
    nb, graded = prepare(submission.nb, instructor, parsed)
    work = Path(tempfile.mkdtemp(prefix="submission-", dir=scratch))
    try:
        runs = run_notebook(nb, notebook_workdir(work, notebooks), cell_timeout, timeout, env)
    except Exception as exc:  # the kernel would not start: grade nothing as passed, say why
        return rows({e.grade_id: (False, f"not run: the kernel failed ({type(exc).__name__}: {exc}).")
                     for e in parsed.exercises})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if executed is not None:
        target = Path(executed) / submission.learner / submission.notebook
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))
    return rows({grade_id: _verdict(runs.get(index) if index is not None else None, grade_id)
                 for grade_id, index in graded.items()})


def instructor_course(notebooks: Path = student.NOTEBOOKS_DIR) -> dict[str, student.Parsed]:
    """Every instructor notebook parsed. A notebook that breaks the convention blocks only the grading
    of its own submissions; a grade id used by two notebooks blocks everything (it names no exercise)."""
    try:
        parsed = [student.parse(student.read(path), path.name) for path in student.notebook_paths(notebooks)]
    except student.ConventionError as exc:
        raise GradingError(f"the instructor notebooks cannot be read: {exc}") from None
    repeated = [text for text in student.course_problems(parsed) if "more than once in the course" in text]
    if repeated:
        raise GradingError("the instructor notebooks cannot grade: " + " ".join(repeated))
    return {p.name: p for p in parsed}


def grade(submissions: Path, notebooks: Path = student.NOTEBOOKS_DIR, timeout: int = NOTEBOOK_TIMEOUT,
          cell_timeout: int = CELL_TIMEOUT, executed: Path | None = None, progress: bool = True) -> list[Row]:
    """Grade every submission in `submissions` against the instructor notebooks in `notebooks`."""
    course = instructor_course(notebooks)
    found = find_submissions(submissions, course)
    broken = sorted({s.notebook for s in found if course[s.notebook].problems})
    if broken:
        problems = [text for name in broken for text in course[name].problems]
        raise GradingError(f"the instructor notebook(s) {', '.join(broken)} in {notebooks} cannot grade: they break "
                           "the exercise convention:\n" + "\n".join(f"- {text}" for text in problems))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qlib-grade-") as scratch:
        env = kernel_env(write_network_guard(Path(scratch) / "guard"))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(found), desc="grading", unit="notebook", file=sys.stderr)
        for submission in found:
            start = time.monotonic()
            if course[submission.notebook].exercises:
                got = grade_submission(submission, course, notebooks, Path(scratch), timeout, cell_timeout, env,
                                       executed)
            else:
                got = []
            rows += got
            if bar is not None:
                bar.write(f"{submission.learner} / {Path(submission.notebook).stem}: "
                          f"{sum(r.points for r in got)}/{sum(r.max_points for r in got)} points "
                          f"({time.monotonic() - start:.0f} s)" + ("" if got else ", no exercise to grade"),
                          file=sys.stderr)
                bar.update()
        if bar is not None:
            bar.close()
    return rows


def write_csv(rows: list[Row], path: Path) -> Path:
    """Write the rows to `path` (columns COLUMNS) atomically: a temporary file renamed over it."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(COLUMNS)
            writer.writerows(row.as_list() for row in rows)
        os.chmod(temporary, 0o666 & ~student._umask())  # mkstemp's file is private; a grades file is not
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def summary(rows: list[Row]) -> str:
    """A table of points, learners by notebooks, with each learner's total."""
    learners = sorted({r.learner for r in rows})
    notebooks = sorted({r.notebook for r in rows})
    if not rows:
        return "nothing graded (no submitted notebook has an exercise)."
    cell = {}
    for r in rows:
        got, most = cell.get((r.learner, r.notebook), (0, 0))
        cell[(r.learner, r.notebook)] = (got + r.points, most + r.max_points)
    header = ["learner", *notebooks, "total"]
    table = []
    for learner in learners:
        marks = [cell.get((learner, n)) for n in notebooks]
        total = (sum(m[0] for m in marks if m), sum(m[1] for m in marks if m))
        table.append([learner, *[f"{m[0]}/{m[1]}" if m else "-" for m in marks], f"{total[0]}/{total[1]}"])
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in [header, *table]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.grade", description=(
        "Run each submitted notebook (no network, in a temporary copy) and grade its check cells, "
        "restored from the instructor's notebooks."))
    parser.add_argument("submissions", type=Path,
                        help="folder of submissions: <learner>/NN_name.ipynb, or <learner>.ipynb")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV file to write (default: grades.csv)")
    parser.add_argument("--timeout", type=int, default=NOTEBOOK_TIMEOUT,
                        help=f"seconds per notebook (default {NOTEBOOK_TIMEOUT})")
    parser.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT,
                        help=f"seconds per cell (default {CELL_TIMEOUT})")
    parser.add_argument("--notebooks", type=Path, default=student.NOTEBOOKS_DIR,
                        help="instructor notebooks (default: notebooks/ of this repository)")
    parser.add_argument("--executed", type=Path, default=None,
                        help="also write each executed submission to EXECUTED/<learner>/ (feedback)")
    args = parser.parse_args(argv)
    if args.timeout < 1 or args.cell_timeout < 1:
        parser.error("--timeout and --cell-timeout are whole numbers of seconds, at least 1.")
    try:
        rows = grade(args.submissions, args.notebooks, args.timeout, args.cell_timeout, args.executed)
    except QlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_csv(rows, args.out)
    print(summary(rows))
    print(f"{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
