"""One way to write benchmark reports: ``reports/<date>-<name>/metrics.csv`` and ``summary.md``.

``RAYLINE_REPORTS_ROOT`` moves them (any root :mod:`cluster.files` writes: a path, ``s3://`` …).

Every benchmark measures its baseline in the same script and reports medians over
n >= 5 repeats plus percentiles, with the hardware and versions it ran on.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cluster import files

ROOT = Path(__file__).resolve().parent.parent
REPORTS_ROOT_ENV = "RAYLINE_REPORTS_ROOT"
MIN_REPEATS = 5


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values`` (order statistics: the ranks a
    binomial(n, 1/2) puts ``level`` between), e.g. 30 paired ratios give the 10th and 21st smallest."""
    from scipy.stats import binom

    ordered = sorted(values)
    n = len(ordered)
    if n == 0 or binom.cdf(0, n, 0.5) > (1 - level) / 2:   # even [min, max] would cover less than ``level``
        raise ValueError(f"{n} values are too few for a {level:.0%} confidence interval of their median")
    k = int(binom.ppf((1 - level) / 2, n, 0.5)) - 1   # 0-based rank of the lower bound
    return ordered[k], ordered[n - 1 - k]


PACKAGES = ("torch", "ray", "polars", "pandas", "mlflow", "deepspeed")


def environment(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory_gib": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.1f}",
    }
    for pkg in packages:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class Report:
    """Collects rows and prose, then writes ``metrics.csv`` and ``summary.md``."""

    name: str
    workload: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    out_dir: Path | None = None

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"## {title}\n\n{body.strip()}\n")

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
        if not rows:
            return "(no rows)"
        cols = list(columns or rows[0].keys())
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
        return "\n".join(lines)

    def write(self, command: str) -> Path | str:
        """Both files under ``out_dir``, else ``$RAYLINE_REPORTS_ROOT`` (a path or s3:// …), else ``reports/``."""
        root = os.environ.get(REPORTS_ROOT_ENV) or ROOT / "reports"
        out = self.out_dir or files.join(root, f"{dt.date.today().isoformat()}-{self.name}")
        if self.rows:
            cols: list[str] = []
            for row in self.rows:
                cols += [k for k in row if k not in cols]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=cols)
            writer.writeheader()
            writer.writerows(self.rows)
            files.atomic_write(files.join(out, "metrics.csv"), buffer.getvalue())
        env = environment()
        head = [f"# Benchmark: {self.name}", "", f"Command: `{command}`", "", f"Workload: {self.workload}", "",
                "## Environment", "", self.table([env]), ""]
        files.atomic_write(files.join(out, "summary.md"), "\n".join(head) + "\n" + "\n".join(self.sections))
        return files.local_path(out) if files.is_local(out) else str(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
