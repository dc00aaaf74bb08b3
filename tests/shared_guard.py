"""The tests never read ``../shared``: CI clones the repository beside a ``shared/`` folder; a user's clone has none.

A test that read it would pass in CI and fail for every user. :func:`install` adds an audit hook (PEP 578) to the
pytest process that answers any open, listing, copy, ``chdir``, database connection or subprocess naming a path
under that folder with the ``FileNotFoundError`` a user would get, so such a test fails in CI too. What it sees:
paths this process opens or lists through Python, and the paths it hands a subprocess (arguments, ``--flag=PATH``,
``PATH:PATH`` lists, ``file://`` URLs, a shell command's words, the working directory, environment values it sets).
What it does not see: what another process (a subprocess, a Ray worker) reads by itself, and reads made in C or C++
(pyarrow, mmap). CI's clean clone shows the tracked files are enough; this shows the folder beside them is unused.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

SHARED = os.path.join(Path(__file__).resolve().parents[2], "shared")
PATH_ARGS = {  # audit event → which of its arguments are paths
    "open": (0,), "os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,), "glob.glob/2": (0, 2), "os.chdir": (0,),
    "shutil.copyfile": (0,), "shutil.copytree": (0,), "os.symlink": (0,), "sqlite3.connect": (0,),
    "os.exec": (0,), "os.posix_spawn": (0,),
}
SEPARATORS = re.compile(r"[=:,]")   # --flag=PATH, PATH:PATH, file://PATH, a,b (and -IPATH below)


def under_shared(path: Any) -> bool:
    """``path`` (a path, an argument or a shell command naming one) names the shared folder or something in it."""
    try:
        text = os.fsdecode(path)
    except TypeError:   # a file descriptor, None, ...
        return False
    if "shared" not in text:   # the common case, without resolving anything
        return False
    try:
        words = shlex.split(text)
    except ValueError:   # unbalanced quotes: not a shell command
        words = [text]
    for word in words:
        for part in SEPARATORS.split(word):
            for candidate in (part, part[2:] if part[:1] == "-" and part[1:2] != "-" else ""):   # -I/PATH
                full = os.path.abspath(candidate) if candidate else ""
                if full == SHARED or full.startswith(SHARED + os.sep):
                    return True
    return False


def _paths(event: str, args: tuple) -> list[Any]:
    if event == "subprocess.Popen":   # (executable, args, cwd, env)
        executable, argv, cwd, env = args
        argv = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv or [])
        # only what this call sets: an inherited environment is the machine's, not the test's
        given = [value for key, value in (env or {}).items() if os.environ.get(key) != value]
        return [executable, *argv, cwd, *given]
    return [args[i] for i in PATH_ARGS.get(event, ()) if i < len(args)]


def _refuse_shared(event: str, args: tuple) -> None:
    if event not in PATH_ARGS and event != "subprocess.Popen":
        return
    for path in _paths(event, args):
        if under_shared(path):
            raise FileNotFoundError(errno.ENOENT, "the tests must not read ../shared: CI has it beside the clone, "
                                    "a user does not (tests/shared_guard.py)", os.fsdecode(path))


def install() -> None:
    sys.addaudithook(_refuse_shared)
