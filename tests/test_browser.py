"""The course as learners see it, in a real browser: JupyterLab's widgets and equations, and the HTML edition.

Only the Python side of the widgets is tested elsewhere; here JupyterLab runs headless on a free
port of 127.0.0.1 over a temporary copy of notebooks/ (Lab autosaves), and Debian's Chromium,
driven by playwright's Python package with `executable_path` (playwright downloads no browser),
opens every notebook: each notebook's equations render without a MathJax error box, and each
notebook with a widget runs all its cells (QLIB_SMOKE=1), renders every widget and updates a
slider's output when the slider moves. The HTML edition (`qlib.site`) is checked the same way,
with no request allowed to leave the machine.

Without Chromium (or playwright) these tests report xfail with the reason, never a silent skip;
`make test` installs Chromium first (scripts/ensure-browser.sh). QLIB_CHROMIUM names another
binary. Screenshots are written to build/screenshots/ (git-ignored); the run prints the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from qlib.paths import REPO_ROOT

CHROMIUM = Path(os.environ.get("QLIB_CHROMIUM", "/usr/bin/chromium"))
# As root in a container, with a closed network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# A notebook "has a widget" when its code imports ipywidgets or qlib's widgets module.
WIDGET_CODE = re.compile(r"^\s*(import ipywidgets|from ipywidgets\b|import qlib\.widgets|from qlib\.widgets\b"
                         r"|from qlib import [^\n]*\bwidgets\b)", re.M)


def _code(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def _markdown(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


WIDGET_NOTEBOOKS = [p for p in NOTEBOOKS if WIDGET_CODE.search(_code(p))]


def _local(url: str) -> bool:
    """file://, or served by 127.0.0.1; data: and blob: URLs are made inside the page, never fetched."""
    parsed = urlparse(url)
    return parsed.scheme in ("file", "data", "blob", "about") or parsed.hostname == "127.0.0.1"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def screenshots(request):
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    yield SCREENSHOTS
    shots = sorted(SCREENSHOTS.glob("*.png"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and shots:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nbrowser screenshots ({len(shots)}): {SCREENSHOTS}")


@pytest.fixture(scope="module")
def chromium(screenshots):
    """Debian's Chromium under playwright; xfail (with the reason) where either is missing."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.xfail(f"no Chromium at {CHROMIUM}: `make test` installs it (scripts/ensure-browser.sh, "
                     "apt-get install chromium), or set QLIB_CHROMIUM to a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.xfail(f"playwright is not installed ({error}): run `make test`, which installs requirements.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, method: str = "GET"):
    request = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1:<free port>, no token, over a temporary copy of notebooks/.

    Its own config, settings and workspace folders: the news / announcements plugin is disabled,
    update checks are off, every cell stays in the page (windowingMode none) and the app is exposed
    as window.jupyterapp so that the test can run its commands."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    config, settings = root / "config", root / "settings"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                   "expose_app_in_browser": True},
        "IdentityProvider": {"token": ""},
        "ServerApp": {"password": "", "disable_check_xsrf": True, "open_browser": False, "port_retries": 0}}))
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = _free_port()
    env = dict(os.environ, QLIB_SMOKE="1", JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTER_DATA_DIR=str(root / "data"))
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}", "--no-browser", "--allow-root",
         f"--ServerApp.root_dir={root / 'notebooks'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            _api(base, "/api/status")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start on {base}:\n{(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield base
    with contextlib.suppress(OSError):  # the server shuts its kernels down on SIGTERM too
        for kernel in _api(base, "/api/kernels"):
            _api(base, f"/api/kernels/{kernel['id']}", "DELETE")
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


def _shut_down_sessions(base: str, name: str | None = None):
    for session in _api(base, "/api/sessions"):
        if name is None or session["path"].endswith(name):
            _api(base, f"/api/sessions/{session['id']}", "DELETE")


@contextlib.contextmanager
def _lab_page(chromium, base: str):
    """A page on the Lab server, and the list of requests it sent outside this machine (the news
    feed or the update check would)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    outside = []
    page.on("request", lambda request: None if _local(request.url) else outside.append(request.url))
    try:
        yield page, outside
    finally:
        context.close()
        _shut_down_sessions(base)


@pytest.fixture(scope="module")
def lab_app(chromium, lab):
    """One JupyterLab page in which the equation tests open and close notebook after notebook."""
    with _lab_page(chromium, lab) as (page, outside):
        page.goto(f"{lab}/lab?reset")
        yield page, outside


# --------------------------------------------------------------------------- JupyterLab helpers

NOTEBOOK_OPEN = """name => {
  const panel = window.jupyterapp.shell.currentWidget;
  return !!(panel && panel.context && panel.context.path.endsWith(name) && panel.context.isReady
            && panel.content && panel.content.widgets.length);
}"""

KERNEL_IDLE = """() => {
  const session = window.jupyterapp.shell.currentWidget.sessionContext.session;
  return !!(session && session.kernel && session.kernel.status === 'idle');
}"""

MATH_STATE = """() => ({
  containers: document.querySelectorAll('.jp-Notebook mjx-container').length,
  rendered: document.querySelectorAll('.jp-Notebook .jp-MarkdownCell .jp-RenderedMarkdown').length,
  errors: [...document.querySelectorAll('mjx-merror')].map(e =>
      (e.getAttribute('data-mjx-error') || 'error') + ' in: ' + e.textContent.slice(0, 160)),
})"""

CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map((cell, index) => {
  if (cell.model.type !== 'code') return null;
  const outputs = cell.model.outputs.toJSON();
  const prompt = cell.node.querySelector('.jp-InputPrompt');
  return {
    index, count: cell.model.executionCount, running: !!(prompt && prompt.textContent.includes('*')),
    errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
    views: outputs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length,
    rendered: cell.node.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').length,
    sliders: cell.node.querySelectorAll('.widget-slider .noUi-handle').length,
  };
}).filter(Boolean)"""


def _wait(page, what: str, seconds: float, ready, interval_ms: int = 300):
    """Poll `ready()` until true, answering JupyterLab's "Select Kernel" dialog when it shows up."""
    deadline = time.monotonic() + seconds
    while True:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "Select Kernel" in dialog.first.inner_text():
            dialog.first.locator(".jp-mod-accept").click()  # the notebook's own kernel, python3
        result = ready()
        if result:
            return result
        if time.monotonic() > deadline:
            shot = SCREENSHOTS / f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())}.png"
            page.screenshot(path=str(shot))
            raise AssertionError(f"waited {seconds:.0f} s for {what}; screenshot: {shot}")
        page.wait_for_timeout(interval_ms)


def _open(page, path: Path, kernel: bool):
    """Open the notebook in the Lab page; with `kernel`, wait until its kernel is idle as well."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands.hasCommand('docmanager:open')",
                           timeout=120_000)
    page.evaluate("() => window.jupyterapp.restored")
    page.evaluate("name => { window.jupyterapp.commands.execute('docmanager:open', {path: name, factory: 'Notebook'}); }",
                  path.name)
    _wait(page, f"{path.name} to open", 120, lambda: page.evaluate(NOTEBOOK_OPEN, path.name))
    if kernel:
        _wait(page, f"{path.name}'s kernel to start", 120, lambda: page.evaluate(KERNEL_IDLE))


def _typeset(page, path: Path) -> dict:
    """Wait until every markdown cell is rendered and MathJax has stopped adding equations."""
    markdown = _markdown(path)
    has_math = any("$" in source for source in markdown)
    seen = []

    def settled():
        state = page.evaluate(MATH_STATE)
        seen.append(state["containers"])
        return (state if state["rendered"] >= len(markdown) and (state["containers"] or not has_math)
                and len(seen) >= 3 and len(set(seen[-3:])) == 1 else None)

    return _wait(page, f"{path.name}'s equations to render", 60, settled)


def _run_and_check_widgets(page, path: Path):
    """Run all cells; every widget rendered; each slider wired to an output changes it when moved."""
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def finished():  # three polls in a row: the kernel is idle for a moment between two cells
        cells = page.evaluate(CELLS)
        done = (page.evaluate(KERNEL_IDLE) and not any(c["running"] for c in cells)
                and (all(c["count"] is not None for c in cells) or any(c["errors"] for c in cells)))
        finished.streak = finished.streak + 1 if done else 0
        return cells if finished.streak >= 3 else None

    finished.streak = 0
    cells = _wait(page, f"{path.name} to run all its cells", 480, finished, interval_ms=500)
    errors = [f"cell {c['index']}: {e}" for c in cells for e in c["errors"]]
    assert not errors, f"{path.name} raised in JupyterLab: {errors}"
    assert all(c["count"] is not None for c in cells), f"{path.name}: cells left unexecuted"

    widget_cells = [c for c in cells if c["views"]]
    assert widget_cells, f"{path.name} imports widgets but displayed none"
    page.wait_for_timeout(500)
    cells = page.evaluate(CELLS)
    unrendered = [(c["index"], c["views"], c["rendered"]) for c in cells if c["rendered"] != c["views"]]
    text = page.evaluate("document.body.innerText")
    first = page.locator(".jp-Notebook .jp-Cell").nth(widget_cells[0]["index"])
    first.scroll_into_view_if_needed()
    shot = SCREENSHOTS / f"lab-{path.stem}-widgets.png"
    page.screenshot(path=str(shot))
    assert "Error displaying widget" not in text, f"{path.name}: JupyterLab says 'Error displaying widget'; {shot}"
    assert not unrendered, f"{path.name}: (cell, widget views, rendered) differ: {unrendered}; screenshot: {shot}"

    moved = 0
    for c in (c for c in cells if c["sliders"]):
        cell = page.locator(".jp-Notebook .jp-Cell").nth(c["index"])
        output = cell.locator(".widget-output").first
        if not output.count():
            continue  # a slider without an output widget: nothing to watch
        before = output.inner_html()
        readout = cell.locator(".widget-readout").first.inner_text()
        cell.locator(".widget-slider .noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        try:
            page.wait_for_function("([el, old]) => el.innerHTML !== old && el.querySelector('.jp-OutputArea-output')",
                                   arg=[output.element_handle(), before], timeout=60_000)
        except Exception as error:  # playwright's TimeoutError
            raise AssertionError(f"{path.name} cell {c['index']}: moving the slider (readout {readout!r} -> "
                                 f"{cell.locator('.widget-readout').first.inner_text()!r}) did not change "
                                 f"its output within 60 s") from error
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENSHOTS / f"lab-{path.stem}-cell{c['index']}-slider-moved.png"))
        assert cell.locator(".widget-readout").first.inner_text() != readout
        moved += 1
    assert moved or not any(c["sliders"] for c in cells), f"{path.name}: no slider with an output to move"
    math_errors = page.evaluate(MATH_STATE)["errors"]  # outputs can carry equations too
    assert not math_errors, f"{path.name}: MathJax error boxes after running: {math_errors}"


# --------------------------------------------------------------------------- tests

def test_some_notebook_has_a_widget_for_the_browser_to_check():
    assert WIDGET_NOTEBOOKS, "no notebook imports ipywidgets or qlib.widgets: the widget test would check nothing"


def test_the_site_reads_the_course_map_from_the_readme_and_it_names_every_notebook():
    from qlib import site

    rows = site.course_map()
    assert [name for _, name, _ in rows] == [p.stem for p in NOTEBOOKS]
    assert all(number == name[:2] and what for number, name, what in rows)


def test_the_site_refuses_a_readme_without_a_course_map_and_an_unknown_notebook(tmp_path):
    from qlib import site
    from qlib.errors import BadInputError

    readme = tmp_path / "README.md"
    readme.write_text("# A course\n\n## Set-up\n\nmake lab\n")
    with pytest.raises(BadInputError, match="Course map"):
        site.course_map(readme)
    with pytest.raises(BadInputError, match="99"):
        site.notebooks(["99"])
    assert site._inline_markdown("`a<b>` **c**") == "<code>a&lt;b&gt;</code> <strong>c</strong>"


def test_the_site_refuses_an_offline_script_whose_checksum_differs(tmp_path):
    from qlib import site_assets

    for package in site_assets.PACKAGES:
        (tmp_path / package.tarball).write_bytes(b"not the package")
    with pytest.raises(site_assets.SiteAssetsError, match="SHA-256"):
        site_assets.fetch(tmp_path)


def test_the_site_says_how_to_get_the_offline_scripts_without_npm(tmp_path, monkeypatch):
    from qlib import site_assets

    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(site_assets.SiteAssetsError, match="no npm"):
        site_assets.fetch(tmp_path / "cache")


@pytest.mark.browser
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupyterlab_renders_every_equation_without_a_mathjax_error(lab_app, lab, path):
    page, outside = lab_app
    _open(page, path, kernel=False)  # rendering the markdown is enough: nothing is run
    state = _typeset(page, path)
    errors = page.locator("mjx-merror")
    if errors.count():
        errors.first.scroll_into_view_if_needed()
    shot = SCREENSHOTS / f"lab-{path.stem}-equations.png"
    page.screenshot(path=str(shot))
    page.evaluate("() => window.jupyterapp.shell.currentWidget.dispose()")  # close() asks to save: the
    # kernel's language_info marks an opened notebook as changed
    _shut_down_sessions(lab, path.name)
    assert not state["errors"], (f"{path.name}: MathJax shows {len(state['errors'])} error box(es) in JupyterLab: "
                                 f"{state['errors']}; screenshot: {shot}")
    assert not outside, f"JupyterLab's page asked for addresses outside this machine: {outside}"


@pytest.mark.browser
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", WIDGET_NOTEBOOKS, ids=lambda p: p.stem)
def test_jupyterlab_runs_the_notebook_renders_its_widgets_and_a_slider_updates_its_output(chromium, lab, path):
    with _lab_page(chromium, lab) as (page, outside):
        page.goto(f"{lab}/lab/tree/{path.name}?reset")
        _open(page, path, kernel=True)
        _run_and_check_widgets(page, path)
    assert not outside, f"JupyterLab's page asked for addresses outside this machine: {outside}"


@pytest.mark.browser
@pytest.mark.timeout(900)
def test_html_edition_page_renders_equations_and_widgets_offline(chromium, tmp_path):
    from qlib import site_assets, site

    try:
        site_assets.fetch(site.CACHE)
    except site_assets.SiteAssetsError as error:
        pytest.xfail(f"the HTML edition's offline scripts are not available here: {error}")
    path = WIDGET_NOTEBOOKS[0]
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "qlib.site", "--smoke", "--out", str(out), path.stem[:2]],
                          capture_output=True, text=True, timeout=840, cwd=REPO_ROOT)
    assert done.returncode == 0, f"python -m qlib.site failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    page_file = out / f"{path.stem}.html"
    index = (out / "index.html").read_text()
    assert f'href="{path.stem}.html"' in index
    missing = [p.stem for p in NOTEBOOKS if p.stem not in index]
    assert not missing, f"the index (the README's course map) lacks {missing}"

    context = chromium.new_context(viewport={"width": 1300, "height": 900})
    outside, failed = [], []

    def guard(route):
        if _local(route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("request", lambda request: None if _local(request.url) else outside.append(request.url))
    page.on("requestfailed", lambda request: failed.append(f"{request.url} ({request.failure})"))
    try:
        page.goto(page_file.as_uri())
        page.wait_for_function("() => window.MathJax && window.MathJax.Hub", timeout=30_000)
        page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")  # resolves after typesetting
        page.wait_for_selector(".jupyter-widgets .widget-slider", timeout=30_000)
        page.wait_for_timeout(500)
        equations = page.locator(".MathJax_CHTML").count()
        # MathJax 2: TeX errors are .mjx-noError boxes (noErrors extension) or .mjx-merror; .MathJax_Error
        # is a processing error.
        math_errors = page.locator(".mjx-merror, .mjx-noError, .MathJax_Error").evaluate_all(
            "els => els.map(e => e.textContent.slice(0, 160))")
        widgets = page.locator(".jupyter-widgets").count()
        text = page.evaluate("document.body.innerText")
        errors = page.locator(".mjx-merror, .mjx-noError, .MathJax_Error")
        (errors.first if errors.count() else page.locator(".jupyter-widgets").first).scroll_into_view_if_needed()
        shot = SCREENSHOTS / f"site-{path.stem}.png"
        page.screenshot(path=str(shot))
    finally:
        context.close()
    assert not outside, f"the page asked for addresses outside this machine: {sorted(set(outside))}"
    assert not failed, f"local files the page could not load: {failed}"
    assert equations > 0, f"no equation rendered by MathJax; screenshot: {shot}"
    assert not math_errors, f"MathJax error boxes in {page_file.name}: {math_errors}; screenshot: {shot}"
    assert widgets and "Error displaying widget" not in text, f"widgets not rendered; screenshot: {shot}"
