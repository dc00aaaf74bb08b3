"""Lineage for code that arrives without ``.git`` (Ray's working-dir upload): the source stamp, in a real git repo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.provenance import GIT_COMMIT_ENV, STAMP_FILE, from_git, from_stamp, source, submission_env, write_stamp


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "train.py").write_text("print('train')\n")
    (repo / "README.md").write_text("hello\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    return repo


def upload(repo: Path, into: Path) -> Path:
    """What Ray's packaging sends: the tree without .git (this test leaves no ignored files in it)."""
    shutil.copytree(repo, into, ignore=shutil.ignore_patterns(".git"))
    return into


def test_a_stamped_checkout_keeps_its_commit_without_git_and_stays_clean(repo: Path, tmp_path: Path) -> None:
    write_stamp(repo)
    assert git(repo, "status", "--porcelain") == ""   # the stamp never makes the checkout itself dirty
    uploaded = upload(repo, tmp_path / "upload")
    (uploaded / "pkg" / "__pycache__").mkdir()
    (uploaded / "pkg" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")   # written by Python later
    found = from_stamp(uploaded)
    assert found is not None and (found.commit, found.dirty, found.how) == (git(repo, "rev-parse", "HEAD"), False,
                                                                             "stamp")


@pytest.mark.parametrize("change", ["edit", "untracked"])
def test_an_edited_or_added_file_in_the_upload_makes_it_dirty(repo: Path, tmp_path: Path, change: str) -> None:
    write_stamp(repo)
    if change == "edit":
        (repo / "pkg" / "train.py").write_text("print('changed')\n")
    else:
        (repo / "pkg" / "new.py").write_text("x = 1\n")
    found = from_stamp(upload(repo, tmp_path / "upload"))
    assert found is not None and found.dirty is True
    assert from_git(repo).dirty is True   # git agrees


def test_submission_time_env_wins_and_unknown_only_without_any_source(repo: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    env = submission_env(repo)
    assert env == {GIT_COMMIT_ENV: git(repo, "rev-parse", "HEAD"), "RAYLINE_GIT_DIRTY": "false"}
    assert (repo / STAMP_FILE).is_file()
    bare = tmp_path / "bare"
    bare.mkdir()
    assert source(str(bare)).tags() == {"git_commit": "unknown", "git_dirty": "unknown", "git_source": "unknown"}
    monkeypatch.setenv(GIT_COMMIT_ENV, "abc123")
    monkeypatch.setenv("RAYLINE_GIT_DIRTY", "true")
    assert source(str(bare)).tags() == {"git_commit": "abc123", "git_dirty": "true", "git_source": "env"}
