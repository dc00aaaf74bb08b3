"""Open-loop HTTP load against the predict endpoint: a fixed request rate, not a fixed concurrency.

Request ``i`` is due at ``t0 + i / rate`` whether or not earlier ones have answered, and
latency is measured from that due time, so a stalled server shows up as latency instead
of silently lowering the offered load (no coordinated omission). Used by the demo (traffic
during canaries), the fault tests (steady load while a replica dies) and the load-curve
benchmark, always as a separate process or thread from the server under test.

    python -m cluster.loadgen --url http://127.0.0.1:8000 --model customers-churn \\
        --records examples/data/customers.csv --rate 50 --duration 60 --out load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deployments.contracts import HEADER_STICKY, HEADER_VARIANT

CLIENT_TIMEOUT_S = 30.0  # above the router's request_timeout_s: overload shows up as the server's 504, not a give-up


@dataclass
class LoadResult:
    rate_per_s: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)   # "200", "503", "conn_error", ...
    variants: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)        # successful requests only
    timeline: list[tuple[float, str, int]] = field(default_factory=list)  # (t since start, variant, status)

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def failure_rate(self) -> float:
        return self.failed / self.sent if self.sent else 0.0

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(failed=self.failed, failure_rate=self.failure_rate, achieved_rps=self.achieved_rps)
        return out


def valid_records(csv_path: str | Path, preprocessing: Any, limit: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """Raw rows of a CSV that the model's own preprocessing accepts (dirty rows are skipped)."""
    import polars as pl

    from models.preprocessing import InputError

    names = [f.name for f in preprocessing.features]
    frame = pl.read_csv(csv_path, infer_schema_length=0).select(names)
    rows: list[dict[str, Any]] = []
    for raw in frame.iter_rows(named=True):
        record = {f.name: _typed(raw[f.name], f.kind) for f in preprocessing.features}
        try:
            preprocessing.encode_records([record])
        except InputError:
            continue
        rows.append(record)
        if len(rows) >= limit:
            break
    random.Random(seed).shuffle(rows)
    return rows


def _typed(value: str | None, kind: str) -> Any:
    if value is None or kind != "numeric":
        return value
    try:
        return float(value)
    except ValueError:
        return value


async def _drive(url: str, model: str, records: list[dict[str, Any]], rate: float, duration_s: float,
                 stop: threading.Event | None, headers: dict[str, str], timeout_s: float,
                 max_in_flight: int) -> LoadResult:
    result = LoadResult(rate_per_s=rate, duration_s=duration_s)
    statuses: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    gate = asyncio.Semaphore(max_in_flight)
    t0 = time.perf_counter()

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(i: int, due: float) -> None:
            record = records[i % len(records)]
            hdrs = {**headers, HEADER_STICKY: f"user-{i}"}
            async with gate:
                try:
                    resp = await client.post(endpoint, json={"instances": [record]}, headers=hdrs)
                    code, variant = str(resp.status_code), resp.headers.get(HEADER_VARIANT, "?")
                except httpx.HTTPError as exc:
                    code, variant = type(exc).__name__, "?"
            done = time.perf_counter()
            statuses[code] += 1
            variants[variant] += 1
            result.timeline.append((round(done - t0, 4), variant, int(code) if code.isdigit() else 0))
            if code == "200":
                result.ok += 1
                result.latencies_ms.append((done - due) * 1000.0)

        tasks = []
        i = 0
        while True:
            due = t0 + i / rate
            if due - t0 >= duration_s or (stop is not None and stop.is_set()):
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
            i += 1
        await asyncio.gather(*tasks)
    result.sent = i
    result.duration_s = min(duration_s, time.perf_counter() - t0)
    result.status_counts = dict(statuses)
    result.variants = dict(variants)
    return result


def run_load(url: str, model: str, records: list[dict[str, Any]], rate_per_s: float, duration_s: float,
             stop: threading.Event | None = None, headers: dict[str, str] | None = None,
             timeout_s: float = CLIENT_TIMEOUT_S, max_in_flight: int = 256) -> LoadResult:
    """Send ``rate_per_s`` requests per second for ``duration_s`` (or until ``stop`` is set)."""
    if not records:
        raise ValueError("no records to send")
    return asyncio.run(_drive(url, model, records, rate_per_s, duration_s, stop, headers or {}, timeout_s,
                              max_in_flight))


class BackgroundLoad:
    """``run_load`` in a thread: start it, do something, ``stop()`` to get the result."""

    def __init__(self, url: str, model: str, records: list[dict[str, Any]], rate_per_s: float,
                 max_duration_s: float = 3600.0) -> None:
        self._stop = threading.Event()
        self._result: LoadResult | None = None
        self._thread = threading.Thread(
            target=self._run, args=(url, model, records, rate_per_s, max_duration_s), daemon=True)

    def _run(self, *args: Any) -> None:
        self._result = run_load(*args, stop=self._stop)

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join()
        assert self._result is not None
        return self._result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="router or model base URL")
    parser.add_argument("--model", required=True, help="model name in the predict path")
    parser.add_argument("--records", required=True, help="JSON file with a list of instances")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--timeout", type=float, default=CLIENT_TIMEOUT_S,
                        help="client timeout per request, seconds (keep it above the router's request_timeout_s, "
                             "so an overloaded server is seen as its own 504, not a client give-up)")
    args = parser.parse_args(argv)
    records = json.loads(Path(args.records).read_text())
    result = run_load(args.url, args.model, records, args.rate, args.duration, timeout_s=args.timeout)
    Path(args.out).write_text(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
