"""Ingest's typed errors: each says which file, column, rule or version is at fault."""

from __future__ import annotations

from cluster.errors import RaylineError


class IngestError(RaylineError):
    """Base for ingest failures."""

    exit_code = 7


class ContractError(IngestError):
    """The contract file is invalid, or the data breaks it in a way quarantine cannot absorb."""


class SourceError(IngestError):
    """A source file is missing, empty, malformed or unreadable."""


class DriftError(IngestError):
    """The new version drifted past the contract's threshold and the contract says fail."""


class DatasetNotFound(IngestError):
    """A dataset or a version of it does not exist in the catalog."""


class AccountingError(IngestError):
    """rows_in != rows_out + rows_quarantined + rows_deduplicated: a bug, never published."""


class StorageError(IngestError):
    """The catalog's filesystem refused a write: it is full or read-only."""
