"""Self-describing, signed request ids: feedback days later is joined without any per-request state.

Every predict response carries an id that *is* the join record: the variant and the registered
version that served it, when (whole seconds), how many instances it answered and, when they fit,
the predictions themselves, signed with an HMAC. Any router replica, a restarted one included,
verifies the signature and reads the record back from the id alone: no lookup table to keep,
replicate, or lose. A forged or edited id fails the signature; an id older than the deployment's
``feedback_ttl_days`` is refused.

Layout: ``r1.<payload>.<mac>``, both base64url without padding; ``payload`` is the JSON list
``[variant, version, served_at_s, nonce, count, predictions|null]`` (zlib-compressed when over 256
bytes) and ``mac`` the first 16 bytes of HMAC-SHA256(key, payload). Predictions are embedded while
their JSON stays under ``MAX_EMBEDDED_BYTES`` (every single-instance request, and batches of small
labels); a larger batch gets an id without them, which still joins rewards but not labels.

The key is derived from the admin token (every replica of the app has it), or, without one, is a
random key created once in the feedback store (:meth:`deployments.feedback.FeedbackStore.signing_key`).
Rotating it invalidates the ids issued before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

PREFIX = "r1"
MAC_BYTES = 16
MAX_EMBEDDED_BYTES = 4096      # predictions' JSON beyond this is not put in the id (labels cannot be joined)
MAX_ID_CHARS = 8192            # longer ids are refused before any decoding
COMPRESS_ABOVE = 256           # payload bytes; smaller ones go as plain JSON


class RequestIdError(ValueError):
    """An id this deployment did not issue, edited, malformed or expired: ``status`` 422 (or 410 expired)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Served:
    """What one response was: who served it, when, and what it predicted (None when not embedded)."""

    variant: str
    version: str
    served_at: int
    nonce: str
    count: int
    predictions: list[Any] | None


def derive_key(secret: str, purpose: str = "rayline/request-id/v1") -> bytes:
    """A signing key of its own from a shared secret (the admin token), so the token itself never signs."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, variant: str, version: str, predictions: list[Any], served_at: float) -> str:
    """The id of one response (predictions embedded when small enough)."""
    text = json.dumps(predictions, separators=(",", ":"), default=str)
    embedded = predictions if len(text) <= MAX_EMBEDDED_BYTES else None
    record = [variant, str(version), int(served_at), secrets.token_hex(6), len(predictions), embedded]
    payload = json.dumps(record, separators=(",", ":"), default=str).encode()
    if len(payload) > COMPRESS_ABOVE:   # zlib costs ~0.1 ms to set up: worth it only for batches
        payload = zlib.compress(payload, 6)
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]
    return f"{PREFIX}.{_b64(payload)}.{_b64(mac)}"


def verify(key: bytes, request_id: str, now: float, ttl_s: float) -> Served:
    """The record inside ``request_id``; :class:`RequestIdError` unless this key signed it within ``ttl_s``."""
    if len(request_id) > MAX_ID_CHARS:
        raise RequestIdError(f"is longer than {MAX_ID_CHARS} characters; not an id this service issued")
    parts = request_id.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise RequestIdError(f"is not a request id ({PREFIX}.<payload>.<mac>) this service issued")
    try:
        payload, mac = _unb64(parts[1]), _unb64(parts[2])
    except ValueError:
        raise RequestIdError("is not valid base64url") from None
    expected = hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise RequestIdError("signature does not match: not issued by this deployment, or edited")
    try:
        text = payload if payload.startswith(b"[") else zlib.decompress(payload)   # zlib never starts with "["
        variant, version, served_at, nonce, count, predictions = json.loads(text)
    except (ValueError, TypeError, zlib.error):   # signed but unreadable: an id of another layout
        raise RequestIdError("signed but not readable by this release") from None
    if now - served_at > ttl_s:
        raise RequestIdError(f"expired: served {(now - served_at) / 86400:.1f} days ago; feedback is accepted for "
                             f"{ttl_s / 86400:g} days", status=410)
    return Served(str(variant), str(version), int(served_at), str(nonce), int(count), predictions)
