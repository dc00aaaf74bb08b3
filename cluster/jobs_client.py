"""Ray job submission through the SDK, with the cluster's auth token passed on every call.

The same path users take with ``ray job submit --working-dir . -- python -m jobs.X``,
so what works from ``rayline job submit`` works from plain Ray tooling too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.capacity import Capacity, CapacityError, Need, capacity, shortfall
from cluster.errors import JobError
from cluster.provenance import submission_env
from cluster.settings import Settings, job_env

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0
AUTOSCALER_WAIT_S = 600.0   # how long a job waits for an autoscaling cluster to grow, by default
CAPACITY_POLL_S = 5.0
# Never upload local state, virtualenvs or build outputs with the working dir.
WORKING_DIR_EXCLUDES = [".venv", ".tools", ".rayline", "reports", ".git", "**/__pycache__", ".whl", ".gl"]


class JobsClient:
    def __init__(self, settings: Settings) -> None:
        from ray.job_submission import JobSubmissionClient

        # The SDK logs every ignored file of the working-dir upload at INFO.
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.settings = settings
        token = settings.ray_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._headers = headers or {}
        self.address = str(settings.ray_dashboard_url)
        try:
            self._client = JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:  # the SDK raises bare Exceptions/ConnectionErrors
            raise JobError(f"cannot reach the Ray job API at {self.address}: {_one_line(exc)}") from None

    def submit(
        self,
        entrypoint: str,
        working_dir: str | Path | None = ".",
        env: dict[str, str] | None = None,
        submission_id: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        runtime_env: dict[str, Any] = {}
        if working_dir is not None:
            runtime_env["working_dir"] = str(working_dir)
            runtime_env["excludes"] = WORKING_DIR_EXCLUDES
        # Every job sees the same stack as its submitter (absolute state paths) and knows its commit.
        runtime_env["env_vars"] = {**job_env(self.settings), **submission_env(working_dir), **(env or {})}
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return self._client.submit_job(
                    entrypoint=entrypoint, runtime_env=runtime_env or None,
                    submission_id=submission_id, metadata=metadata,
                )
            except Exception as exc:
                # Ray answers this while the head's job agent is still starting: retry, as it asks.
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                raise JobError(f"job submission to {self.address} failed: {_one_line(exc)}") from None

    def capacity(self) -> Capacity:
        """What the cluster has, what is free now and who holds the rest (the dashboard's state API)."""
        alive = "filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
        return capacity(self._get("/api/cluster_status?format=0"),
                        self._get(f"/api/v0/actors?detail=1&limit=10000&{alive}")["data"]["result"]["result"],
                        self._get("/api/v0/placement_groups?detail=1&limit=10000")["data"]["result"]["result"])

    def ensure_fits(self, need: Need, what: str, fix: str, wait_s: float | None = None,
                    say: Callable[[str], None] = print) -> None:
        """Return when ``need`` fits in what is free; else CapacityError with the figures and ``fix``.

        A cluster that cannot grow fails at once. One with an autoscaler (or any, given ``wait_s``) is
        waited for, saying so every poll, until ``wait_s`` (default ``AUTOSCALER_WAIT_S``) runs out.
        """
        cap = self.capacity()
        problem = shortfall(need, cap)
        if problem is None:
            return
        limit = wait_s if wait_s is not None else (AUTOSCALER_WAIT_S if cap.autoscaler else 0.0)
        deadline = time.monotonic() + limit
        while problem is not None and time.monotonic() < deadline:
            say(f"waiting for resources: {what}: {problem}; {deadline - time.monotonic():.0f} s left")
            time.sleep(min(CAPACITY_POLL_S, max(0.0, deadline - time.monotonic())))
            problem = shortfall(need, self.capacity())
        if problem is not None:
            waited = f" after waiting {limit:.0f} s" if limit else ""
            raise CapacityError(f"{what} cannot start{waited}: {problem}; {fix}")

    def _get(self, path: str) -> dict[str, Any]:
        import httpx

        try:
            response = httpx.get(self.address.rstrip("/") + path, headers=self._headers, timeout=15)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JobError(f"cannot read the cluster's resources from {self.address}: {_one_line(exc)}") from None

    def status(self, job_id: str) -> str:
        try:
            return str(self._client.get_job_status(job_id).value)
        except Exception as exc:
            raise JobError(f"cannot get status of job {job_id}: {_one_line(exc)}") from None

    def logs(self, job_id: str) -> str:
        try:
            return self._client.get_job_logs(job_id)
        except Exception as exc:
            raise JobError(f"cannot get logs of job {job_id}: {_one_line(exc)}") from None

    def list(self) -> list[Any]:
        return self._client.list_jobs()

    def stop(self, job_id: str) -> bool:
        return bool(self._client.stop_job(job_id))

    def follow(self, job_id: str, on_line: Callable[[str], None]) -> str:
        """Stream the job's logs to ``on_line`` until it ends; returns the final status."""

        async def _tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                for line in chunk.removesuffix("\n").split("\n"):  # \r redraws stay inside their line
                    on_line(line)

        asyncio.run(_tail())
        return self.wait(job_id, timeout_s=30)

    def run(self, entrypoint: str, working_dir: str | Path | None = ".", env: dict[str, str] | None = None,
            timeout_s: float = 900.0) -> dict[str, Any]:
        """Submit, wait, and return the job's ``RAYLINE_RESULT``; a failed job is a JobError with its log tail."""
        job_id = self.submit(entrypoint, working_dir=working_dir, env=env)
        final = self.wait(job_id, timeout_s=timeout_s)
        logs = self.logs(job_id)
        result = parse_result(logs)
        if final != "SUCCEEDED" or result is None:
            tail = " | ".join(logs.strip().splitlines()[-3:])
            raise JobError(f"job {job_id} ({entrypoint}) ended {final}: {tail}")
        return {"job_id": job_id, **result}

    def wait(self, job_id: str, timeout_s: float = 600.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.status(job_id)
            if state in TERMINAL or time.monotonic() > deadline:
                return state
            time.sleep(0.5)


RESULT_PREFIX = "RAYLINE_RESULT "


def parse_result(logs: str) -> dict[str, Any] | None:
    """The JSON summary a rayline job prints last (``RAYLINE_RESULT {...}``), if any."""
    import json

    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
