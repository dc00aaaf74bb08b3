"""What KubeRay v1.7.0's controller would accept: every rendered values file, and each rule failing.

The rules are `tests/helm/kuberay_rules.py` (restated from the operator's validation.go); no
operator runs here (no Kubernetes API), so the rendered objects go through those rules instead.
Each rule gets an example that breaks it, made from a real rendered object.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helm import kuberay_rules
from tests.helm.conftest import EXAMPLES, Manifest, one

KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")


@pytest.fixture(scope="module")
def jobs(renderer) -> Manifest:
    """A shared-cluster and a dedicated-cluster RayJob, rendered from the defaults."""
    def enable(v: dict[str, Any]) -> None:
        v["jobs"]["train"]["enabled"] = True
        v["jobs"]["trainDeepspeed"].update(enabled=True, cluster="dedicated", backoffLimit=2)

    return renderer.render(renderer.values(enable))


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_rendered_values_file_passes_kuberays_controller_rules(rendered, example: str) -> None:
    docs = [d for d in rendered[example] if d["kind"] in KUBERAY_KINDS]
    assert docs
    for doc in docs:
        assert kuberay_rules.violations(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_production_with_every_job_enabled_passes_the_rules(renderer) -> None:
    """The production example used to set backoffLimit for shared-cluster jobs: ValidationFailed."""
    values = EXAMPLES["production"]
    jobs = ["ingest", "train", "evaluate", "hello", "trainDeepspeed"]
    docs = renderer.render(None, "-f", str(values), *[a for j in jobs for a in ("--set", f"jobs.{j}.enabled=true")])
    rayjobs = [d for d in docs if d["kind"] == "RayJob"]
    assert len(rayjobs) == 5
    for doc in rayjobs:
        assert kuberay_rules.violations(doc) == [], doc["metadata"]["name"]


def _job(docs: Manifest, dedicated: bool) -> dict[str, Any]:
    found = next(d for d in docs if d["kind"] == "RayJob" and ("rayClusterSpec" in d["spec"]) == dedicated)
    return copy.deepcopy(found)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return mutate


def _env(container_path: str, name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in container_path.split("."):
            node = node[int(key)] if key.isdigit() else node[key]
        node["env"].append({"name": name, "value": value})

    return mutate


HEAD = "spec.headGroupSpec.template.spec.containers.0"
WORKER = "spec.workerGroupSpecs.0"
SVC = "spec.rayClusterConfig"

# (rule id, object: cluster | serve | shared-job | dedicated-job, mutation)
FAILING: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("name", "shared-job", _set("metadata.name", "rl-" + "x" * 45)),  # 48 > 47
    ("name", "cluster", _set("metadata.name", "Rl_Cluster")),
    ("group-containers", "cluster", _set(f"{WORKER}.template.spec.containers", [])),
    ("group-resources-twice", "cluster", _set("spec.headGroupSpec.resources", {"CPU": "1"})),  # head: num-cpus 0
    ("group-labels", "cluster", _set(f"{WORKER}.rayStartParams.labels", "a=b")),
    ("group-labels", "cluster", _set(f"{WORKER}.labels", {"bad key!": "x"})),
    ("worker-replicas", "cluster", _set(f"{WORKER}.minReplicas", 5)),
    ("worker-replicas", "serve", lambda d: (_set(f"{SVC}.enableInTreeAutoscaling", False)(d),
                                            _drop(f"{SVC}.workerGroupSpecs.0.maxReplicas")(d))),
    ("worker-group-name", "cluster", _set(f"{WORKER}.groupName", "GPU_big")),
    ("worker-idle-timeout", "cluster", _set("spec.autoscalerOptions.version", "v1")),
    ("gcs-ft", "serve", _env(f"{SVC}.headGroupSpec.template.spec.containers.0", "RAY_REDIS_ADDRESS", "redis:6379")),
    ("gcs-ft", "gcs-ft", _set("metadata.annotations", {"ray.io/ft-enabled": "true"})),
    ("gcs-ft", "gcs-ft", _env(f"{SVC}.headGroupSpec.template.spec.containers.0", "REDIS_PASSWORD", "x")),
    ("autoscaler", "cluster", _env(HEAD, "RAY_enable_autoscaler_v2", "1")),
    ("autoscaler", "cluster", _set("spec.headGroupSpec.template.spec.restartPolicy", "Always")),
    ("auth-ray-version", "cluster", _set("spec.rayVersion", "2.50.0")),
    ("cluster-upgrade-strategy", "cluster", _set("spec.upgradeStrategy.type", "RollingUpdate")),
    ("cluster-upgrade-strategy", "dedicated-job", _set("spec.rayClusterSpec.upgradeStrategy", {"type": "Recreate"})),
    ("cluster-upgrade-strategy", "serve", _set(f"{SVC}.upgradeStrategy", {"type": "Recreate"})),
    ("job-shutdown", "shared-job", _set("spec.ttlSecondsAfterFinished", 60)),
    ("job-shutdown", "dedicated-job", lambda d: d["spec"].update(suspend=True, shutdownAfterJobFinishes=False,
                                                                  ttlSecondsAfterFinished=0)),
    ("job-cluster", "shared-job", _set("spec.clusterSelector", {"ray.io/cluster": ""})),
    ("job-cluster", "dedicated-job", _drop("spec.rayClusterSpec")),
    ("job-submitter", "shared-job", _set("spec.submissionMode", "SidecarMode")),
    ("job-submitter", "dedicated-job", lambda d: d["spec"].update(submissionMode="InteractiveMode", backoffLimit=1)),
    ("job-backoff-selector", "shared-job", _set("spec.backoffLimit", 1)),
    ("job-runtime-env", "shared-job", _set("spec.runtimeEnvYAML", "env_vars: {a: [")),
    ("job-deadlines", "shared-job", _set("spec.activeDeadlineSeconds", 0)),
    ("serve-initializing-timeout", "serve", _set("metadata.annotations", {"ray.io/initializing-timeout": "-5m"})),
    ("serve-head-service", "serve", _set(f"{SVC}.headGroupSpec.headService", {"metadata": {"name": "mine"}})),
    ("serve-config", "serve", _set("spec.serveConfigV2", "applications:\n- name: a\n  route_prefix: /\n")),
    ("serve-config", "serve", _set("spec.serveConfigV2", "applications: [")),
    ("serve-upgrade-strategy", "serve", _set("spec.upgradeStrategy.type", "BlueGreen")),
    ("serve-upgrade-strategy", "incremental", _set("spec.upgradeStrategy.clusterUpgradeOptions.stepSizePercent", 50)),
    ("serve-upgrade-strategy", "incremental", _drop("spec.upgradeStrategy.clusterUpgradeOptions.gatewayClassName")),
    ("serve-upgrade-strategy", "incremental", _set(f"{SVC}.enableInTreeAutoscaling", False)),
    ("serve-dead-field", "serve", _set("spec.serviceUnhealthySecondThreshold", 900)),
]


def _object(which: str, rendered: dict[str, Manifest], jobs: Manifest) -> dict[str, Any]:
    if which == "cluster":
        return copy.deepcopy(one(rendered["default"], "RayCluster"))
    if which == "serve":
        return copy.deepcopy(one(rendered["default"], "RayService"))
    if which == "gcs-ft":
        return copy.deepcopy(one(rendered["gcs-ft"], "RayService"))
    if which == "incremental":
        return copy.deepcopy(one(rendered["incremental-upgrade"], "RayService"))
    return _job(jobs, dedicated=which == "dedicated-job")


@pytest.mark.parametrize(("rule", "which", "mutate"), FAILING, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(FAILING)])
def test_each_rule_rejects_its_failing_example(rendered, jobs, rule: str, which: str, mutate) -> None:
    doc = _object(which, rendered, jobs)
    assert kuberay_rules.violations(doc) == [], "the starting object must be valid"
    mutate(doc)
    found = kuberay_rules.violations(doc)
    assert rule in {r for r, _ in found}, found


def test_every_rule_has_a_failing_example() -> None:
    source = Path(kuberay_rules.__file__).read_text()
    rules = set(re.findall(r'\(\("([a-z0-9-]+)",', source)) | set(re.findall(r'return \[\("([a-z0-9-]+)",', source))
    assert rules == {rule for rule, _, _ in FAILING}
