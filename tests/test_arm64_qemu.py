"""scripts/arm64-qemu.sh (make arm64) and its Makefile targets, checked without running qemu: cheap everywhere.
The ARM64 run itself (make record-arm64, make test-arm64) is not part of make test."""

import re
import shutil
import subprocess

import pytest

from qlib.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "arm64-qemu.sh"
TARGETS = ("arm64", "record-arm64", "test-arm64")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_script_names_packages_only_never_a_host():
    # apt and pip by package name: no address, no host name (anything like name.org / name.com ...).
    text = SCRIPT.read_text()
    assert not re.search(r"\w+://", text), "the script names an address"
    hosts = re.findall(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:org|com|net|io|dev|cloud)\b", text, re.I)
    assert not hosts, f"the script names hosts: {hosts}"


def test_the_script_installs_into_the_ignored_build_folder_by_default():
    text = SCRIPT.read_text()
    assert 'W="${1:-$REPO/build/arm64-qemu}"' in text
    assert "/build/" in (REPO_ROOT / ".gitignore").read_text().split()


def test_the_makefile_has_the_arm64_targets_outside_make_test():
    makefile = (REPO_ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    for target in TARGETS:
        assert target in phony, target
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        assert f"make {target} " in makefile, f"make help does not mention {target}"
    test_rule = re.search(r"^test:(.*)$", makefile, re.M).group(1)
    assert not set(test_rule.split()) & set(TARGETS)
