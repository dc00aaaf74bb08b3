"""Ingest fixtures (the data helpers live in ``tests.ingest.helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "catalog")
