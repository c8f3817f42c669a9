"""Repository hygiene: notebooks stored clean, named in teaching order, the set-up documented."""

import json
import re

import pytest

from qlib import pt2e
from qlib.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs_and_with_the_python3_kernel(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    dirty = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_named_in_teaching_order(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name


def test_notebook_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers))


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_requirements_are_pinned_exactly():
    lines = [l.strip() for l in (REPO_ROOT / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    loose = [l for l in lines if "==" not in l]
    assert not loose, f"unpinned requirements: {loose}"
    pins = dict(l.split("==") for l in lines)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["torchao"] == pt2e.TORCHAO_VERSION  # the version qlib.pt2e checks at import
    assert pins["ipywidgets"].startswith("8.") and pins["jupyterlab_widgets"].startswith("3.")


# "notebook 07", "notebooks 05-07", "Notebooks 03, 05-08", "notebooks 01, 05 and 07", "notebooks 04 to 07"
_NOTEBOOK_REFERENCE = re.compile(r"\b[Nn]otebooks? (\d\d(?:(?:\s*[,–-]\s*|\s+(?:and|or|to)\s+)\d\d)*)")


def _referenced_numbers(text: str) -> set[str]:
    numbers = set()
    for match in _NOTEBOOK_REFERENCE.finditer(text):
        found = re.findall(r"\d\d", match.group(1))
        numbers.update(found)
        for low, high in re.findall(r"(\d\d)\s*(?:[–-]|\s+to\s+)\s*(\d\d)", match.group(1)):
            numbers.update(f"{n:02d}" for n in range(int(low), int(high) + 1))
    return numbers


def _texts_that_refer_to_notebooks():
    sources = [("README.md", (REPO_ROOT / "README.md").read_text())]
    sources += [(p.relative_to(REPO_ROOT).as_posix(), p.read_text()) for p in sorted((REPO_ROOT / "qlib").rglob("*.py"))]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        sources.append((path.name, "\n".join("".join(cell["source"]) for cell in cells)))
    return sources


def test_the_reference_parser_reads_ranges_and_lists():
    assert _referenced_numbers("see notebooks 05-07 and notebook 11") == {"05", "06", "07", "11"}
    assert _referenced_numbers("Notebooks 03, 05 and 08; notebooks 04 to 06") == {"03", "04", "05", "06", "08"}


def test_every_notebook_reference_names_a_notebook_that_exists():
    existing = {p.name[:2] for p in NOTEBOOKS}
    dangling = {name: sorted(_referenced_numbers(text) - existing) for name, text in _texts_that_refer_to_notebooks()}
    dangling = {name: numbers for name, numbers in dangling.items() if numbers}
    assert not dangling, f"references to notebooks that do not exist: {dangling}"
    files = {p.name for p in NOTEBOOKS}
    named = {name: sorted(set(re.findall(r"\b\d\d_[a-z0-9_]+\.ipynb", text)) - files)
             for name, text in _texts_that_refer_to_notebooks() if not name.startswith("qlib/")}  # qlib: examples
    named = {name: missing for name, missing in named.items() if missing}
    assert not named, f"notebook file names that do not exist: {named}"


def test_the_readme_does_not_call_an_existing_notebook_planned():
    readme = (REPO_ROOT / "README.md").read_text()
    assert not re.search(r"\bplanned\b", readme, re.I), "the README still calls something planned"


def test_the_readme_learners_map_agrees_with_each_notebooks_own_map():
    from qlib import student

    readme = (REPO_ROOT / "README.md").read_text()
    rows = {n: (t, e) for n, t, e in re.findall(r"^\| (\d\d) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", readme, re.M)}
    parsed = student.validate_course()
    for path in NOTEBOOKS:
        opening = "".join(json.loads(path.read_text())["cells"][1]["source"])
        time = re.search(r"\*\*Time:\*\*\s*(.*)", opening)
        assert time, f"{path.name}: its second cell gives no **Time:** estimate"
        exercises = parsed[path.name].exercises
        listed = f"{len(exercises)} ({parsed[path.name].max_points})" if exercises else "none"
        number = path.name[:2]
        assert number in rows, f"the README's learner's map has no row for {path.name}"
        assert re.sub(r"\s+", " ", time.group(1)).strip().rstrip(".") == rows[number][0].strip()
        assert rows[number][1].strip() == listed, f"{path.name}: README says {rows[number][1]!r}, notebook has {listed}"
