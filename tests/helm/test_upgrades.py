"""Which `helm upgrade`s roll pods, which rebuild clusters, and what is kept (chart README "Upgrades").

Each case renders the real chart before and after a change of values (or of the chart version)
and reads the difference as KubeRay and Kubernetes would (tests/helm/upgrade_effects.py); no
cluster runs here, so the operator's and the kubelet's reactions are inferred from their rules.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CHART, NAMESPACE, RELEASE, Manifest, parse_manifest, run_helm
from tests.helm.upgrade_effects import effects, kept_data

MLFLOW = f"Deployment/{RELEASE}-rayline-mlflow: pods roll"


def _tag(v: dict[str, Any]) -> None:
    v["image"]["tag"] = "0.2.0"


def _serve_replicas(v: dict[str, Any]) -> None:
    v["serving"]["app"]["replicas"] = 3


def _scale(v: dict[str, Any]) -> None:
    v["serving"]["workerGroups"][0]["maxReplicas"] = 8
    v["rayCluster"]["workerGroups"][0].update(replicas=2, maxReplicas=8)


def _mlflow_resources(v: dict[str, Any]) -> None:
    v["mlflow"]["resources"]["limits"]["memory"] = "4Gi"


def _worker_resources(v: dict[str, Any]) -> None:
    v["rayCluster"]["workerGroups"][0]["resources"]["limits"]["memory"] = "64Gi"


def _none_strategies(v: dict[str, Any]) -> None:
    _tag(v)
    v["rayCluster"]["upgradeStrategy"] = "None"


CASES: list[tuple[str, Callable[[dict[str, Any]], None], set[str]]] = [
    ("image tag", _tag, {"RayCluster: all pods recreated", "RayService: new cluster (NewCluster)", MLFLOW}),
    ("image tag, RayCluster upgradeStrategy None", _none_strategies,
     {"RayCluster: running pods keep the old spec", "RayService: new cluster (NewCluster)", MLFLOW}),
    ("serving app replicas", _serve_replicas, {"RayService: serve config applied in place"}),
    ("worker group bounds", _scale, {"RayService: scaled in place", "RayCluster: scaled in place"}),
    ("MLflow resources", _mlflow_resources, {MLFLOW}),
    ("training worker resources", _worker_resources, {"RayCluster: all pods recreated"}),
]


@pytest.mark.parametrize(("change", "mutate", "expected"), CASES, ids=[c[0] for c in CASES])
def test_what_an_upgrade_restarts(renderer, rendered, change: str, mutate, expected: set[str]) -> None:
    before = rendered["default"]
    after = renderer.render(renderer.values(mutate))
    assert effects(before, after) == expected
    assert kept_data(before, after) == []


def _render_chart(chart: Path) -> Manifest:
    result = run_helm("template", RELEASE, str(chart), "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    return parse_manifest(result.stdout)


def test_a_chart_version_bump_alone_restarts_nothing(rendered, tmp_path: Path) -> None:
    """Chart labels live on the objects, not in pod templates: KubeRay's hash and pod specs hold."""
    bumped = tmp_path / "rayline"
    shutil.copytree(CHART, bumped)
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"] = "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    after = _render_chart(bumped)
    assert any(d["metadata"]["labels"].get("helm.sh/chart") == "rayline-9.9.9" for d in after)
    assert effects(rendered["default"], after) == set()
    assert kept_data(rendered["default"], after) == []


def test_storage_and_the_database_volume_are_kept(rendered) -> None:
    docs = rendered["laptop"]  # bundled PostgreSQL and an artifacts claim
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    names = {c["metadata"]["name"] for c in claims}
    assert names == {f"{RELEASE}-rayline-shared", f"{RELEASE}-rayline-mlflow-artifacts"}
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in claims)
    postgres = next(d for d in docs if d["kind"] == "StatefulSet")
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
