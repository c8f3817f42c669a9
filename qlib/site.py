"""The HTML edition: the course readable without running it, and readable offline.

`make site` (`python -m qlib.site`) executes every notebook at full size in a temporary copy (the
committed notebooks stay without outputs), each cell under a timeout (a run can hang: one in nine
did here) and the widgets' state saved so that sliders still show in the page; exports each with
nbconvert's `lab` template pointed at local copies of MathJax, require.js and the widget renderer
(`qlib.site_assets`); and writes `site/index.html` with the course map read from README.md, so the
map lives in one place. `site/build.json` remembers each page's status and time across builds.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import site_assets
from .errors import BadInputError
from .paths import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
SITE = REPO_ROOT / "site"
CACHE = REPO_ROOT / "build" / "site-cache"
# Seconds a cell may run. Generous: on a shared 2-core machine notebook 09's QAT fine-tuning cell
# ran 1110 s (past 600 s twice before); a hung cell still ends, and gets one retry.
CELL_TIMEOUT = 1800

# A page: nbconvert's lab template, plus a line of links to the index and the neighbours.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block body_header -%}
{{ super() }}
<nav class="qlib-nav" style="margin: 0.5em 1em; font-family: var(--jp-ui-font-family);">
{{ resources.qlib_nav }}
</nav>
{%- endblock body_header -%}
"""


@dataclass
class Page:
    """What one notebook's build gave: its page, whether it ran to the end, and how long it took."""

    name: str
    status: str          # "ok", or "failed: <why>"
    seconds: float
    smoke: bool
    built: str           # date and time of the build


def course_map(readme: Path = REPO_ROOT / "README.md") -> list[tuple[str, str, str]]:
    """The rows (number, notebook name, what it proves) of the README's "Course map" table."""
    text = Path(readme).read_text(encoding="utf-8")
    section = re.search(r"^## Course map\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if section is None:
        raise BadInputError(f"{readme} has no '## Course map' section: the index of the HTML edition "
                            "reads its table from there. Add the section back (a table | # | notebook | ... |).")
    rows = []
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 3 and re.fullmatch(r"\d+", cells[0]):
            rows.append((cells[0], cells[1].strip("`"), "|".join(cells[2:]).strip()))
    if not rows:
        raise BadInputError(f"the '## Course map' section of {readme} has no table rows of the form "
                            "| 01 | `01_name` | what it proves |.")
    return rows


def _inline_markdown(text: str) -> str:
    """The little markdown a course-map cell uses (`code`, **bold**, *italics*) as HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)


def _title(readme: Path = REPO_ROOT / "README.md") -> str:
    first = Path(readme).read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip()


def write_index(out: Path, pages: dict[str, dict], readme: Path = REPO_ROOT / "README.md") -> Path:
    """site/index.html: the course map, each notebook linked to its page when it was built."""
    mapped = course_map(readme)
    names = [name for _, name, _ in mapped]
    extra = [(name[:2], name, "(not in the README's course map)") for name in sorted(pages) if name not in names]
    rows = []
    for number, name, what in mapped + extra:
        page = pages.get(name)
        link = (f'<a href="{html.escape(name)}.html">{html.escape(name)}</a>'
                if (Path(out) / f"{name}.html").is_file() else html.escape(name))
        if page is None:
            state = "not built"
        else:
            size = "smoke size" if page["smoke"] else "full size"
            state = f"{html.escape(page['status'])}, {page['seconds']:.0f} s at {size}, {html.escape(page['built'])}"
        rows.append(f"<tr><td>{html.escape(number)}</td><td>{link}</td><td>{_inline_markdown(what)}</td>"
                    f"<td class='state'>{state}</td></tr>")
    title = html.escape(_title(readme))
    body = "\n".join(rows)
    index = Path(out) / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }} .state {{ color: #555; font-size: 0.85em; min-width: 12em; }}
</style></head>
<body>
<h1>{title}</h1>
<p>The HTML edition: every notebook executed, with its outputs, plots and widgets (the widgets show the
state the run left; moving them needs a running kernel: open the notebook in JupyterLab with
<code>make lab</code>). The pages load nothing from the internet.</p>
<h2>Course map</h2>
<table><thead><tr><th>#</th><th>notebook</th><th>what it proves with code</th><th>this build</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
""", encoding="utf-8")
    return index


@contextlib.contextmanager
def _environ(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(path: Path, workdir: Path, smoke: bool, cell_timeout: int = CELL_TIMEOUT, progress=None, log=print):
    """Run the notebook at `path` with cwd `workdir`; returns (executed notebook, error or None).

    A cell that runs past `cell_timeout` seconds, or a kernel that dies, gets one fresh retry
    (`progress` shows the cell being run, `log` says why a retry happens)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    for attempt in (1, 2):
        nb = nbformat.read(path, as_version=4)
        count = sum(cell.cell_type == "code" for cell in nb.cells)
        started = iter(range(1, count + 1))

        def on_cell_start(cell, cell_index):
            if progress is not None and cell.cell_type == "code":
                progress(f"{path.stem}: cell {next(started)}/{count}" + (" (retry)" if attempt == 2 else ""))

        client = NotebookClient(nb, timeout=cell_timeout, startup_timeout=120, kernel_name="python3",
                                store_widget_state=True, on_cell_start=on_cell_start,
                                resources={"metadata": {"path": str(workdir)}})
        try:
            with _environ(QLIB_SMOKE="1" if smoke else "0"):
                client.execute()
            return nb, None
        except (CellTimeoutError, DeadKernelError) as error:
            why = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
            if attempt == 2:
                return nb, f"twice {why}"
            log(f"{path.stem}: {why}; running the notebook once more")
        except CellExecutionError as error:
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            return nb, f"a cell raised: {lines[-1][:300] if lines else type(error).__name__}"


def export(nb, name: str, out: Path, nav: str) -> Path:
    """Write `out/<name>.html` with nbconvert's lab template, loading its scripts from `out/static/`."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="qlib_site.html.j2",
                            extra_loaders=[DictLoader({"qlib_site.html.j2": _TEMPLATE})], **site_assets.URLS)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}, "qlib_nav": nav})
    page = Path(out) / f"{name}.html"
    page.write_text(body, encoding="utf-8")
    return page


def _nav(names: list[str], name: str) -> str:
    i = names.index(name)
    links = ['<a href="index.html">Course map</a>']
    if i > 0:
        links.append(f'<a href="{names[i - 1]}.html">&larr; {names[i - 1]}</a>')
    if i + 1 < len(names):
        links.append(f'<a href="{names[i + 1]}.html">{names[i + 1]} &rarr;</a>')
    return " &middot; ".join(links)


def notebooks(only=()) -> list[Path]:
    """The course's notebooks, or those whose name starts with one of `only` (e.g. "01")."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        chosen = [p for p in paths if any(p.name.startswith(o) for o in only)]
        unknown = [o for o in only if not any(p.name.startswith(o) for p in paths)]
        if unknown:
            raise BadInputError(f"no notebook in {NOTEBOOKS} starts with {unknown}; pass numbers such as 01 "
                                f"or names from {[p.stem for p in paths]}.")
        return chosen
    return paths


def build(out: Path = SITE, only=(), smoke: bool = False, cell_timeout: int = CELL_TIMEOUT,
          cache: Path = CACHE, show_progress: bool = True) -> list[Page]:
    """Execute the notebooks (all, or `only`) in a temporary copy and write their pages and the index."""
    from tqdm.auto import tqdm

    out = Path(out)
    chosen = notebooks(only)
    out.mkdir(parents=True, exist_ok=True)
    site_assets.install(cache, out / "static")  # first: a missing script fails before minutes of work
    state_file = out / "build.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    names = [p.stem for p in notebooks()]
    results = []
    with tempfile.TemporaryDirectory(prefix="qlib-site-") as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        bar = tqdm(chosen, desc="site", unit="notebook", disable=not show_progress, file=sys.stdout)
        for path in bar:
            bar.set_postfix_str(path.stem)
            began = time.perf_counter()
            nb, error = execute(work / path.name, work, smoke, cell_timeout, bar.set_postfix_str, bar.write)
            seconds = time.perf_counter() - began
            export(nb, path.stem, out, _nav(names, path.stem))
            page = Page(path.stem, "ok" if error is None else f"failed: {error}", round(seconds, 1), smoke,
                        time.strftime("%Y-%m-%d %H:%M"))
            state[path.stem] = asdict(page)
            state_file.write_text(json.dumps(state, indent=1, sort_keys=True))
            results.append(page)
            bar.write(f"{path.stem}: {page.status} ({seconds:.0f} s)")
    write_index(out, state)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.site", description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebooks to build (numbers or names); all by default")
    parser.add_argument("--out", type=Path, default=SITE, help="where to write the pages (default: site/)")
    parser.add_argument("--smoke", action="store_true", help="run at smoke size (QLIB_SMOKE=1), for a quick look")
    parser.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT, help="seconds a cell may run")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    pages = build(args.out, args.only, args.smoke, args.cell_timeout)
    failed = [p for p in pages if p.status != "ok"]
    print(f"==> site: {len(pages) - len(failed)}/{len(pages)} pages built in {time.perf_counter() - began:.0f} s; "
          f"open {Path(args.out).resolve() / 'index.html'}")
    for page in failed:
        print(f"==> site: {page.name} {page.status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
