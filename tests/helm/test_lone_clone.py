"""The project carries what its chart tests need: they pass in a copy with nothing beside it.

Real files, a real nested pytest run; nothing is mocked. Our CI clones the repository next to
a `shared/` folder, so a test that reads a sibling shared folder would pass there and fail for everyone
else: the copy here is made in an empty temporary folder to catch exactly that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helm.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "helm" / "rayline" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_and_new_files() -> list[str]:
    """What a clone would hold: tracked files plus new ones git does not ignore (this working tree)."""
    if not (ROOT / ".git").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("not a git checkout: cannot tell which files a clone would hold")
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_links_stay_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert resolved.exists(), f"{doc.name} links to a missing file: {target}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chart_tests_pass_in_a_copy_with_no_shared_folder_beside_it(tmp_path: Path) -> None:
    clone = tmp_path / "rayline"
    for rel in tracked_and_new_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel)
    # The installed tools are build outputs, not project files: the copy borrows them.
    (clone / ".tools").symlink_to((ROOT / ".tools").resolve())
    assert not (tmp_path / "shared").exists()
    env = {**os.environ, "PYTHONPATH": str(clone)}
    result = subprocess.run(
        # Left out: checkov and the MLflow migration run (they read only temp files; ~30 s of CI time).
        [sys.executable, "-m", "pytest", "tests/helm", "-q", "-x", "-p", "no:cacheprovider",
         "--ignore", "tests/helm/test_lone_clone.py",
         "--deselect", "tests/helm/test_policy.py::test_checkov_scans_every_workload_and_fails_no_check",
         "--deselect", "tests/helm/test_production_fixes.py::"
                       "test_the_rendered_migration_command_creates_then_upgrades_a_real_database"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=580, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
