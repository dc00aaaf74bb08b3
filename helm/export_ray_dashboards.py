"""Write Ray's stock Grafana dashboards into the chart (helm/rayline/dashboards/ray/).

Ray generates these dashboards at run time under its session folder, where a Kubernetes
Grafana never sees them; the chart ships them as ConfigMaps instead. They are generated here
from the installed Ray (the version pyproject.toml pins), with no environment overrides, so a
Ray upgrade is: upgrade, run `python helm/export_ray_dashboards.py`, commit. The chart test
tests/helm/test_ray_dashboards.py fails while the files differ from what the installed Ray
generates.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

OUT = Path(__file__).resolve().parent / "rayline" / "dashboards" / "ray"
DASHBOARDS = ("default", "serve", "serve_deployment", "train")


def generate() -> dict[str, str]:
    """File name → minified dashboard JSON, for each stock dashboard."""
    out = {}
    for name in DASHBOARDS:
        content, _uid = getattr(factory, f"generate_{name}_grafana_dashboard")()
        out[f"ray-{name.replace('_', '-')}.json"] = json.dumps(json.loads(content), separators=(",", ":"),
                                                               sort_keys=True) + "\n"
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
