"""One logging setup: JSON lines through the standard ``logging`` module.

Each line carries timestamp, level, component, trace_id, message and any ``extra``
fields the caller passed, so logs from Ray jobs, Serve replicas and the CLI can be
joined by trace id. Inside a Serve replica the lines also go to that replica's own Serve
log file (``<session>/logs/serve/replica_<app>_<deployment>_<id>.log``), where operators
look for a deployment's logs: without it they only reach the worker's anonymous
``worker-<id>-<pid>.err`` file, and Serve's own logger drops anything below its level.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster.tracing import current_trace_id

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "alembic")


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": getattr(record, "component", self.component),
            "logger": record.name,
            "trace_id": getattr(record, "trace_id", None) or current_trace_id(),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line and not key.startswith("_"):   # _ray_timestamp_ns
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + component + " %(name)s: %(message)s")


def configure_logging(component: str, level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Install one handler on the root logger (idempotent: replaces an earlier rayline handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_rayline", False):
            root.removeHandler(handler)
    formatter = JsonFormatter(component) if fmt == "json" else TextFormatter(component)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    replica_log = serve_replica_log_file()
    if replica_log is not None:
        handlers.append(logging.handlers.WatchedFileHandler(replica_log))   # follows Serve's rotation
    for handler in handlers:
        handler._rayline = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log every HTTP request at INFO; keep them for DEBUG runs only.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


def serve_replica_log_file() -> str | None:
    """The log file Serve keeps for the replica this process runs (None outside a Serve replica)."""
    for handler in logging.getLogger("ray.serve").handlers:
        target = getattr(handler, "target", None)   # Serve buffers its file handler behind a MemoryHandler
        if isinstance(target, logging.FileHandler) and Path(target.baseFilename).name.startswith("replica_"):
            return target.baseFilename
    return None


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
