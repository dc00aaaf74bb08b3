"""Typed errors a user can act on.

Everything below the edges raises these; the CLI turns them into one line and a
non-zero exit, the HTTP layer into a JSON body. Nothing below the edge prints.
"""

from __future__ import annotations


class RaylineError(Exception):
    """Base class: ``str(err)`` is a single line that says what to do."""

    exit_code = 1


class ConfigError(RaylineError):
    """A setting or config file is invalid."""

    exit_code = 2


class PortInUseError(RaylineError):
    """A port the local stack needs is taken."""

    exit_code = 3


class StackError(RaylineError):
    """The local stack could not be started, reached or stopped."""

    exit_code = 4


class JobError(RaylineError):
    """A Ray job could not be submitted or ended badly."""

    exit_code = 5


class RegistryError(RaylineError):
    """MLflow is unreachable or a model/version/alias does not exist."""

    exit_code = 6
