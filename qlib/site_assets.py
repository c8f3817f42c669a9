"""Local copies of the three scripts nbconvert's HTML pages load from the internet.

nbconvert's `lab` template loads MathJax 2, require.js and the widget renderer
(`@jupyter-widgets/html-manager`) from public CDNs, so an exported notebook shows raw TeX and no
widgets offline. `fetch` takes each package once with `npm pack` (pinned version, checked against
its SHA-256) into a cache folder, `install` copies the files a page needs into `site/static/`, and
`URLS` are the page-relative addresses the HTML edition (`qlib.site`) gives nbconvert.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import QlibError


class SiteAssetsError(QlibError, RuntimeError):
    """The offline scripts could not be fetched or do not match their pinned checksum."""


@dataclass(frozen=True)
class Package:
    spec: str          # what `npm pack` is given: name@exact-version
    tarball: str       # the file name npm pack writes
    sha256: str        # of that tarball: a cached copy is used only if it matches
    folder: str        # under site/static/
    members: tuple     # paths inside the tarball's package/ folder: files, or folders ending in /


# MathJax 2: nbconvert's template configures version 2 (TeX-AMS_CHTML-full,Safe); only the
# CommonHTML output, its TeX fonts (woff) and the extensions / English strings it can load.
# html-manager 1.0.15 is the renderer of ipywidgets 8.1 (widget state version 2).
PACKAGES = (
    Package("mathjax@2.7.9", "mathjax-2.7.9.tgz",
            "7131e739848edc14aa661a5516995866b81a477fab8b039d7cc324930e71f786", "mathjax",
            ("MathJax.js", "LICENSE", "config/TeX-AMS_CHTML-full.js", "config/Safe.js", "extensions/",
             "jax/input/TeX/", "jax/output/CommonHTML/", "jax/element/", "fonts/HTML-CSS/TeX/woff/",
             "localization/en/")),
    Package("requirejs@2.3.8", "requirejs-2.3.8.tgz",
            "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec", "requirejs",
            ("require.js",)),
    Package("@jupyter-widgets/html-manager@1.0.15", "jupyter-widgets-html-manager-1.0.15.tgz",
            "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638", "html-manager",
            ("dist/embed-amd.js", "dist/embed.js.LICENSE.txt", ".woff", ".woff2", ".ttf", ".eot", ".svg")),
)

# Page-relative addresses, for pages written next to static/.
URLS = {
    "mathjax_url": "static/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
    "require_js_url": "static/requirejs/require.js",
    "widget_renderer_url": "static/html-manager/dist/embed-amd.js",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path) -> dict[str, Path]:
    """Each package's tarball in `cache`, packed with npm the first time; checked against its SHA-256."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    tarballs = {}
    for package in PACKAGES:
        path = cache / package.tarball
        if not path.is_file():
            npm = shutil.which("npm")
            if npm is None:
                raise SiteAssetsError(
                    f"{package.tarball} is not in {cache} and there is no npm to fetch it: the HTML pages "
                    f"need a local copy of {package.spec} to work offline. Install Node.js (with npm), or "
                    f"copy the tarball that `npm pack {package.spec}` writes into {cache}.")
            done = subprocess.run([npm, "pack", package.spec, "--pack-destination", str(cache), "--silent"],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0 or not path.is_file():
                raise SiteAssetsError(
                    f"`npm pack {package.spec}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}. "
                    f"The HTML pages need it to work offline: check that npm reaches its registry, or copy "
                    f"{package.tarball} into {cache}.")
        digest = _sha256(path)
        if digest != package.sha256:
            raise SiteAssetsError(
                f"{path} has SHA-256 {digest}, not the pinned {package.sha256} of {package.spec}: a different "
                "or damaged file would be served to every page. Delete it and build again to fetch it anew.")
        tarballs[package.spec] = path
    return tarballs


def _wanted(name: str, members: tuple) -> bool:
    return any(name == m or (m.endswith("/") and name.startswith(m))
               or (m.startswith(".") and name.startswith("dist/") and name.endswith(m)) for m in members)


def install(cache: Path, static: Path) -> Path:
    """Copy what the pages load into `static/<folder>/` (replacing an older copy); returns `static`."""
    static = Path(static)
    tarballs = fetch(cache)
    for package in PACKAGES:
        target = static / package.folder
        shutil.rmtree(target, ignore_errors=True)
        with tarfile.open(tarballs[package.spec]) as tar:
            chosen = []
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and _wanted(inner, package.members):
                    member.name = inner
                    chosen.append(member)
            tar.extractall(target, members=chosen, filter="data")
    return static
