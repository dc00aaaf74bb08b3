"""Canary report: Markdown + HTML + a PNG of traffic share, error rate and p99 per variant over time.

Made only from the persisted bundle (state, events, timeline — see :meth:`RolloutStore.bundle`),
so a report can be written long after the rollout, from any machine that can fetch it.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

from deployments.contracts import BASELINE, CANDIDATE

VARIANTS = (BASELINE, CANDIDATE)


def write_report(bundle: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``timeline.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "timeline.png"
    plot(bundle, png)
    md = out / "report.md"
    md.write_text(markdown(bundle, png.name))
    page = out / "report.html"
    page.write_text(to_html(bundle, png.name))
    return {"markdown": md, "html": page, "plot": png}


def candidate_share(bundle: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(seconds since start, candidate traffic %) for the plot, ending with the decision itself.

    The timeline holds analysis samples; the decision's own traffic change (the rollback to
    0 %, the promotion to 100 %) comes from the final state.
    """
    state, timeline = bundle["state"], bundle["timeline"]
    t0 = state["created_at"]
    times = [p["at"] - t0 for p in timeline]
    shares = [100 * p["weights"].get(CANDIDATE, 0.0) for p in timeline]
    if state.get("decided_at"):
        times.append(state["decided_at"] - t0)
        shares.append(100 * state["traffic"]["weights"].get(CANDIDATE, 0.0))
    return times, shares


def plot(bundle: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state, timeline = bundle["state"], bundle["timeline"]
    t0 = state["created_at"]
    times = [p["at"] - t0 for p in timeline]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].step(*candidate_share(bundle), where="post", label=CANDIDATE)
    axes[0].set_ylabel("candidate traffic %")
    for variant in VARIANTS:
        rows = [(t, p["variants"].get(variant)) for t, p in zip(times, timeline, strict=True)]
        rows = [(t, v) for t, v in rows if v and v["requests"]]
        axes[1].plot([t for t, _ in rows], [100 * v["error_rate"] for _, v in rows], marker=".", label=variant)
        p99 = [(t, v["p99_ms"]) for t, v in rows if v["p99_ms"] is not None]
        axes[2].plot([t for t, _ in p99], [v for _, v in p99], marker=".", label=variant)
    axes[1].set_ylabel("error rate %")
    axes[2].set_ylabel("p99 latency ms")
    axes[2].set_xlabel("seconds since start")
    if state.get("decided_at"):
        for ax in axes:
            ax.axvline(state["decided_at"] - t0, color="red", linestyle="--", linewidth=1)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"rollout {state['rollout_id']}: {state['phase']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else "-"


def summary_rows(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    s = bundle["state"]
    rows = [("rollout", s["rollout_id"]), ("model", s["model"]), ("mode", s["spec"]["mode"]),
            ("baseline", f"v{s['baseline_version']}"), ("candidate", f"v{s['candidate_version']}"),
            ("outcome", s["phase"]), ("reason", s["reason"]), ("started", _when(s["created_at"])),
            ("decided", _when(s.get("decided_at")))]
    ab = (s.get("decision") or {}).get("ab")
    if ab:
        rows += [("test", ab["test"]), ("effect (candidate − baseline)", f"{ab['effect']:+.4g}"),
                 (f"{100 * (1 - ab['alpha']):.0f}% CI", f"[{ab['ci_low']:.4g}, {ab['ci_high']:.4g}]"),
                 ("p-value", f"{ab['p_value']:.4g}"), ("samples", f"{ab['n_baseline']} / {ab['n_candidate']}"),
                 ("decision", ab["decision"])]
    return rows


def event_rows(bundle: dict[str, Any]) -> list[list[str]]:
    t0 = bundle["state"]["created_at"]
    return [[f"{e['at'] - t0:.1f}", e["command"], e["actor"], f"{e['from']} → {e['to']}",
             f"{100 * e['weights'].get(CANDIDATE, 0.0):.0f}%", str(e["epoch"]), e["reason"]]
            for e in bundle["events"]]


EVENT_COLUMNS = ["t (s)", "command", "actor", "phase", "candidate", "epoch", "reason"]


def markdown(bundle: dict[str, Any], png_name: str) -> str:
    lines = [f"# Rollout report: {bundle['state']['rollout_id']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(bundle)]
    lines += ["", f"![traffic, error rate and p99 per variant]({png_name})", "", "## Events", "",
              "| " + " | ".join(EVENT_COLUMNS) + " |", "|" + "---|" * len(EVENT_COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in event_rows(bundle)]
    return "\n".join(lines) + "\n"


def to_html(bundle: dict[str, Any], png_name: str) -> str:
    esc = html.escape
    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary_rows(bundle))
    head = "".join(f"<th>{esc(c)}</th>" for c in EVENT_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in event_rows(bundle))
    title = esc(f"Rollout report: {bundle['state']['rollout_id']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}</style></head><body>"
            f"<h1>{title}</h1><table>{summary}</table><p><img src='{esc(png_name)}' width='900'></p>"
            f"<h2>Events</h2><table><tr>{head}</tr>{body}</table></body></html>\n")
