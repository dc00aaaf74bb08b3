"""Reading a user's YAML file (config, contract, rollout spec) with errors a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cluster.errors import RaylineError


def read_yaml_mapping(path: str | Path, error: type[RaylineError], what: str) -> dict[str, Any]:
    """The file's top-level mapping; a missing, unreadable, malformed or non-mapping file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
