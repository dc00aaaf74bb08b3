"""Ray's stock Grafana dashboards ship with the chart, exactly as the pinned Ray generates them.

Real Ray code generates them (no cluster needed); real helm renders the ConfigMaps.
"""

from __future__ import annotations

import importlib.util
import json

from tests.helm.conftest import CHART, ROOT, Manifest, by_kind

RAY_DIR = CHART / "dashboards" / "ray"


def _exporter():
    spec = importlib.util.spec_from_file_location("export_ray_dashboards", ROOT / "helm" / "export_ray_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_ray_dashboards_are_what_the_installed_ray_generates() -> None:
    generated = _exporter().generate()
    shipped = {p.name: p.read_text() for p in RAY_DIR.glob("*.json")}
    assert set(shipped) == set(generated) == {"ray-default.json", "ray-serve.json", "ray-serve-deployment.json",
                                              "ray-train.json"}
    stale = [name for name, text in generated.items() if json.loads(shipped[name]) != json.loads(text)]
    assert not stale, f"run `python helm/export_ray_dashboards.py`: {stale} differ from the installed Ray's"


def test_ray_dashboards_render_as_grafana_configmaps_and_can_be_turned_off(renderer, rendered: dict[str, Manifest]):
    maps = {d["metadata"]["name"]: d for d in by_kind(rendered["production"], "ConfigMap")
            if d["metadata"]["labels"].get("grafana_dashboard") == "1"}
    assert {"rl-rayline-dashboard-ray-default", "rl-rayline-dashboard-ray-serve", "rl-rayline-dashboard-ray-train",
            "rl-rayline-dashboard-ray-serve-deployment"} <= set(maps)
    serve = json.loads(maps["rl-rayline-dashboard-ray-serve"]["data"]["ray-serve.json"])
    assert serve["uid"] == "rayServeDashboard"
    assert "Cluster" in [v["name"] for v in serve["templating"]["list"]]  # filters on our ray_io_cluster label
    off = renderer.render(renderer.values(lambda v: v["monitoring"]["dashboards"].update(ray=False)))
    sources = [d["metadata"]["labels"].get("rayline.io/dashboard-source") for d in by_kind(off, "ConfigMap")]
    assert "ray" not in sources and sources.count("rayline") == len(list((CHART / "dashboards").glob("*.json")))
