"""Typed rollout errors; ``status_code`` is what the admin API answers with."""

from __future__ import annotations

from cluster.errors import RaylineError


class RolloutError(RaylineError):
    """A rollout command or spec that cannot be carried out; ``str()`` says why in one line."""

    exit_code = 7

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class SpecError(RolloutError):
    """A rollout spec (YAML) that does not validate."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


class LostWrite(RolloutError):
    """Another controller wrote the rollout first; this one reloaded and did nothing (409: retry the command)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=409)
