"""The project carries what its tests need: nothing in it reads the ``shared/`` folder CI keeps beside the clone.

CI clones the repository next to ``shared/``; a user's clone has nothing beside it. ``tests/shared_guard.py``
(installed by ``tests/conftest.py`` for the whole suite) refuses the pytest process's reads of that folder and the
paths it hands subprocesses (see its docstring for what it cannot see), so a test that would only pass in CI fails
there too. CI's clean clone shows the tracked files suffice. These tests check the guard itself, and that the
documents link only to files in the repository. Real files and processes; nothing is mocked.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests import shared_guard
from tests.helm.conftest import ROOT
from tests.shared_guard import SHARED, under_shared

DOCS = [ROOT / "README.md", ROOT / "helm" / "rayline" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_links_stay_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert resolved.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_guarded_folder_is_the_one_beside_the_clone() -> None:
    assert str(ROOT.parent / "shared") == SHARED


@pytest.mark.parametrize("named", ["{s}/notes.md", "--schemas={s}/crds", "file://{s}/x", "/opt/a:{s}/b",
                                   "-I{s}/include", "cat {s}/x | wc", "{s}"])
def test_every_way_of_naming_the_folder_is_seen(named: str) -> None:
    assert under_shared(named.format(s=ROOT.parent / "shared"))


@pytest.mark.parametrize("named", ["{r}/tests/shared_guard.py", "{r}/../shared-other/x", "/dev/shm/x",
                                   "multiprocessing.shared_memory", "--shared", "-Wshared"])
def test_other_paths_with_shared_in_them_are_not_refused(named: str) -> None:
    assert not under_shared(named.format(r=ROOT))


READS = {  # every way a test might read the shared folder, each refused before it happens
    "open": lambda target, tmp: Path(target).read_text(),
    "listdir": lambda target, tmp: os.listdir(os.path.dirname(target)),
    "scandir": lambda target, tmp: list(os.scandir(os.path.dirname(target))),
    "glob": lambda target, tmp: glob.glob(os.path.join(os.path.dirname(target), "*")),
    "copy": lambda target, tmp: shutil.copy(target, tmp),
    "subprocess argument": lambda target, tmp: subprocess.run(["cat", target], capture_output=True, check=False),
    "subprocess --flag=": lambda target, tmp: subprocess.run([sys.executable, "-c", "pass", f"--f={target}"],
                                                            check=False),
    "subprocess cwd": lambda target, tmp: subprocess.run(["true"], cwd=os.path.dirname(target), check=False),
    "subprocess env": lambda target, tmp: subprocess.run(["true"], env={**os.environ, "SCHEMAS": target},
                                                         check=False),
    "shell": lambda target, tmp: subprocess.run(f"cat {target} | wc -l", shell=True, check=False),
    "sqlite": lambda target, tmp: sqlite3.connect(target),
}


@pytest.mark.parametrize("how", READS)
def test_a_test_reading_the_shared_folder_fails_as_it_would_for_a_user(how: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused with the error a user without the folder gets. The guard is pointed at a folder made here, which
    exists and holds the file (each read would succeed without the guard), so this test never touches ../shared."""
    folder = tmp_path / "beside" / "shared"
    folder.mkdir(parents=True)
    (folder / "notes.md").write_text("only in CI")
    monkeypatch.setattr(shared_guard, "SHARED", str(folder))
    (tmp_path / "copies").mkdir()
    with pytest.raises(FileNotFoundError, match=r"must not read \.\./shared"):
        READS[how](str(folder / "notes.md"), tmp_path / "copies")


def test_a_folder_named_shared_elsewhere_is_read_as_usual(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "notes.md").write_text("ok")
    assert (tmp_path / "shared" / "notes.md").read_text() == "ok"
    assert subprocess.run(["cat", str(tmp_path / "shared" / "notes.md")], capture_output=True, text=True,
                          check=True).stdout == "ok"
    # the machine's own environment is not the test's doing: only values a call sets are looked at
    assert subprocess.run(["true"], env={**os.environ}, check=False).returncode == 0
