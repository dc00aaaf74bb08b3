"""JSON log lines with trace ids, W3C traceparent handling, and the shared metrics registry."""

from __future__ import annotations

import io
import json
import logging

from cluster import metrics
from cluster.logs import configure_logging
from cluster.tracing import ensure_trace_id, make_traceparent, new_trace_id, parse_traceparent, trace


def _log_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_line_is_json_with_component_trace_id_and_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("test-component", stream=stream)
    with trace() as trace_id:
        logging.getLogger("rayline.test").info("step done", extra={"step": 7, "loss": 0.5})
    (line,) = _log_lines(stream)
    assert line["component"] == "test-component"
    assert line["level"] == "INFO"
    assert line["message"] == "step done"
    assert line["trace_id"] == trace_id
    assert (line["step"], line["loss"]) == (7, 0.5)
    assert line["timestamp"].endswith("+00:00")


def test_incoming_traceparent_is_continued_and_garbage_is_replaced() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(incoming) == "4bf92f3577b34da6a3ce929d0e0e4736"
    with trace(incoming) as trace_id:
        assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        outgoing = make_traceparent(trace_id)
        assert parse_traceparent(outgoing) == trace_id and outgoing != incoming
    for bad in ("", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-XYZ-1-01"):
        assert parse_traceparent(bad) is None
    with trace("garbage") as fresh:
        assert len(fresh) == 32 and fresh != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_new_trace_ids_are_valid_w3c_ids_and_unique() -> None:
    ids = {new_trace_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for trace_id in list(ids)[:100]:
        assert parse_traceparent(make_traceparent(trace_id)) == trace_id   # 32 hex digits, not all zero


def test_trace_id_is_carried_within_a_context() -> None:
    with trace() as outer:
        assert ensure_trace_id() == outer


def test_metrics_registration_is_get_or_create_and_exposed() -> None:
    c1 = metrics.counter("test_things_total", "things", ["kind"])
    c2 = metrics.counter("rayline_test_things_total", "things", ["kind"])
    assert c1 is c2
    c1.labels(kind="a").inc(3)
    c2.labels(kind="a").inc(1)   # the same series, whichever handle and call made the child
    c1.labels(kind=7).inc(2)     # label values are strings
    c1.labels(kind="7").inc(1)
    c1.labels(kind=True).inc(1)  # equal to 1 as a key, but its own series
    c1.labels(kind=1).inc(5)
    body, content_type = metrics.exposition()
    assert b'rayline_test_things_total{kind="a"} 4.0' in body
    assert b'rayline_test_things_total{kind="7"} 3.0' in body
    assert b'rayline_test_things_total{kind="True"} 1.0' in body and b'rayline_test_things_total{kind="1"} 5.0' in body
    assert content_type.startswith("text/plain")
