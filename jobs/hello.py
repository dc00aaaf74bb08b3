"""A trivial Ray job that proves the submission path end to end.

``ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.hello``
runs a few Ray tasks on the cluster and prints a JSON summary that comes back in the logs.
"""

from __future__ import annotations

import argparse
import logging
import socket

import ray

from cluster.logs import configure_logging
from cluster.provenance import source
from cluster.tracing import ensure_trace_id
from jobs.entry import emit_result, entrypoint

log = logging.getLogger("jobs.hello")


@ray.remote(num_cpus=0.1)
def _square(x: int) -> tuple[int, str]:
    return x * x, socket.gethostname()


@entrypoint("jobs.hello")
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=4, help="number of Ray tasks to run")
    args = parser.parse_args(argv)
    configure_logging("jobs.hello")
    trace_id = ensure_trace_id()
    ray.init(ignore_reinit_error=True)
    results = ray.get([_square.remote(i) for i in range(args.tasks)])
    summary = {
        "job": "hello",
        "trace_id": trace_id,
        "squares": [r[0] for r in results],
        "cluster_cpus": ray.cluster_resources().get("CPU", 0),
        "source": source().tags(),   # the lineage a training job would record, whichever way it was submitted
    }
    log.info("hello job finished", extra={"tasks": args.tasks})
    return emit_result(summary)


if __name__ == "__main__":
    main()
