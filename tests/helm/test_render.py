"""The chart lints, renders, and every object is valid for Kubernetes and KubeRay v1.7.0.

Nothing is mocked: a real helm binary renders; objects are validated against the
Kubernetes OpenAPI schemas (kubernetes-validate) and the KubeRay v1.7.0 CRD OpenAPI schemas
vendored in third_party/kuberay-crds, since no API server is available here.
"""

from __future__ import annotations

import copy
import hashlib
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import CHART, CRD_DIR, EXAMPLES, NAMESPACE, RELEASE, Manifest, run_helm

KUBE_VERSIONS = ["1.29.0", "1.35.0"]
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
PROMETHEUS_KINDS = {"PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_helm_lint_strict_passes(example: str) -> None:
    path = EXAMPLES[example]
    result = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *(["-f", str(path)] if path else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_example_renders_the_whole_stack(rendered: dict[str, Manifest], example: str) -> None:
    kinds = {d["kind"] for d in rendered[example]}
    ray = {"RayJob"} if example == "dedicated-jobs" else {"RayCluster"}  # jobs bring their own clusters
    assert ray | {"RayService", "Deployment", "Service", "ServiceAccount", "NetworkPolicy"} <= kinds
    assert "Secret" not in kinds, "the chart must only reference secrets, never create them"
    for doc in rendered[example]:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("example", list(EXAMPLES))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_objects_validate_against_kubernetes_schemas(
    rendered: dict[str, Manifest], example: str, kube_version: str
) -> None:
    checked = 0
    for doc in rendered[example]:
        if doc["kind"] in KUBERAY_KINDS | PROMETHEUS_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {kube_version}: {exc.message}")
        checked += 1
    assert checked >= 10


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    file = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}[kind]
    crd = yaml.safe_load((CRD_DIR / f"ray.io_{file}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = crd_validator(doc["kind"]).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_vendored_kuberay_crds_are_the_unmodified_v1_7_0_files() -> None:
    sums = dict(line.split()[::-1] for line in (CRD_DIR / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {f"ray.io_{n}.yaml" for n in ("rayclusters", "rayjobs", "rayservices")}
    for name, digest in sums.items():
        assert hashlib.sha256((CRD_DIR / name).read_bytes()).hexdigest() == digest, f"{name} was modified"
    assert "v1.7.0" in (CRD_DIR / "README.md").read_text() and "Apache" in (CRD_DIR / "README.md").read_text()


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_kuberay_objects_validate_against_v1_7_crds(rendered: dict[str, Manifest], example: str) -> None:
    docs = [d for d in rendered[example] if d["kind"] in KUBERAY_KINDS]
    assert {d["kind"] for d in docs} >= ({"RayJob"} if example == "dedicated-jobs" else {"RayCluster"}) | {"RayService"}
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors[:10])


def test_rayjobs_of_both_cluster_modes_validate_against_the_crd(renderer) -> None:
    def enable(v: dict[str, Any]) -> None:
        for name in ("ingest", "train", "trainDeepspeed", "evaluate", "hello"):
            v["jobs"][name]["enabled"] = True
        v["jobs"]["trainDeepspeed"]["cluster"] = "dedicated"
        v["jobs"]["train"]["args"] = ["--config", "/app/examples/train/customers_mlp.yaml", "--run-name", "it's quoted"]

    jobs = [d for d in renderer.render(renderer.values(enable)) if d["kind"] == "RayJob"]
    assert len(jobs) == 5
    for job in jobs:
        errors = crd_errors(job)
        assert not errors, f"RayJob/{job['metadata']['name']}:\n" + "\n".join(errors[:10])


def test_crd_validation_rejects_wrong_types_and_unknown_fields(rendered: dict[str, Manifest]) -> None:
    cluster = next(d for d in rendered["default"] if d["kind"] == "RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    bad["spec"]["headGroupSpec"]["rayStrtParams"] = {}
    errors = crd_errors(bad)
    assert any("minReplicas" in e and "integer" in e for e in errors), errors
    assert any("rayStrtParams" in e for e in errors), errors


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_prometheus_operator_objects_are_well_formed(rendered: dict[str, Manifest], example: str) -> None:
    """No Prometheus Operator CRD schema is available offline: check the fields it requires."""
    monitoring_on = (
        yaml.safe_load(EXAMPLES[example].read_text()).get("monitoring", {}).get("enabled", True)
        if EXAMPLES[example]
        else True
    )
    docs = [d for d in rendered[example] if d["kind"] in PROMETHEUS_KINDS]
    assert bool(docs) == monitoring_on
    for doc in docs:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        if doc["kind"] == "PodMonitor":
            assert doc["spec"]["selector"]["matchLabels"]
            for ep in doc["spec"]["podMetricsEndpoints"]:
                assert isinstance(ep["port"], str) and ep["interval"].endswith("s")
        else:
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in {"warning", "critical"}


def test_notes_tell_how_to_reach_dashboard_mlflow_and_serving() -> None:
    result = run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"port-forward svc/{RELEASE}-rayline-ray-head-svc 8265:8265" in notes
    assert f"port-forward svc/{RELEASE}-rayline-mlflow 5000:5000" in notes
    assert f"port-forward svc/{RELEASE}-rayline-serve-serve-svc 8000:8000" in notes
    assert "rayline-ray-auth" in notes and "rayline-admin-token" in notes
