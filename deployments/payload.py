"""Predict request bodies: parsed and shape-checked once, before any model sees them.

Router and model server share this so a malformed body gets the same JSON error
(status, field, message) whichever path it came in by, and nothing malformed reaches
code that could raise an unexpected exception (a 500).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

# Python's json turns a 400-digit integer into an int that float() cannot convert (OverflowError);
# map such integers to inf here so the field check reports "must be finite" instead.
_FLOAT_MAX_INT = 2**1023


class PayloadError(Exception):
    """A request the caller must fix: ``status`` (400/413/422), ``field`` and a message naming the problem."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.field, self.message)


def error_body(status: int, field: str | None, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "field": field, "message": message, **extra}}


def json_error(status: int, field: str | None, message: str, headers: dict[str, str] | None = None,
               **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, field, message, **extra), status_code=status, headers=headers)


def install_json_errors(app: FastAPI) -> None:
    """Whatever escapes a handler is still a JSON 500 with its reason logged, never Starlette's plain text."""

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return json_error(500, None, f"internal error ({type(exc).__name__})")

    app.add_exception_handler(Exception, unexpected)


def _parse_int(text: str) -> int | float:
    value = int(text)
    if abs(value) < _FLOAT_MAX_INT:
        return value
    return math.inf if value > 0 else -math.inf


def check_size(content_length: str | None, max_bytes: int) -> None:
    """413 before reading the body when the declared length is already too big."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise PayloadError(400, "content-length", "is not an integer") from None
    if declared > max_bytes:
        raise PayloadError(413, "body", f"is {declared} bytes; the limit is {max_bytes}")


def parse_json(raw: bytes, max_bytes: int) -> Any:
    """Body bytes → JSON value, or a PayloadError (413 too big, 400 not JSON)."""
    if len(raw) > max_bytes:
        raise PayloadError(413, "body", f"is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        return json.loads(raw, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadError(400, "body", f"is not valid JSON ({type(exc).__name__})") from None


def parse_instances(raw: bytes, max_bytes: int, max_instances: int) -> list[dict[str, Any]]:
    """Body bytes → the list of instance objects, or a PayloadError (413 too big, 400 not JSON, 422 wrong shape)."""
    body = parse_json(raw, max_bytes)
    if not isinstance(body, dict):
        raise PayloadError(422, "body", f"must be a JSON object with 'instances', got {type(body).__name__}")
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise PayloadError(422, "instances", "is required and must be a list of objects")
    if not instances:
        raise PayloadError(422, "instances", "must not be empty")
    if len(instances) > max_instances:
        raise PayloadError(422, "instances", f"has {len(instances)} items; at most {max_instances} per request")
    for i, item in enumerate(instances):
        if not isinstance(item, dict):
            raise PayloadError(422, f"instances[{i}]", f"must be an object, got {type(item).__name__}")
    return instances
