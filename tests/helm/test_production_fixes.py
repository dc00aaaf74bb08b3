"""What a platform team needs from the chart beyond valid objects (issue 16), one test per gap.

Real helm renders; objects are inspected as KubeRay, the kubelet and Prometheus would read
them. No Kubernetes API here, so "the operator accepts it" is kuberay_rules and the CRD schemas
(tests/helm/test_render.py, test_kuberay_rules.py), checked on the same renders.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import EXAMPLES, Manifest, by_kind, env_of, one, run_helm
from tests.helm.test_render import crd_errors


def _cluster_pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"].get("rayClusterSpec") or doc["spec"]
    return [spec["headGroupSpec"]["template"], *[g["template"] for g in spec["workerGroupSpecs"]]]


# --- RayJobs ------------------------------------------------------------------------------------


def test_backoff_limit_on_a_shared_cluster_job_fails_at_install_naming_the_fix(renderer) -> None:
    values = renderer.values(lambda v: v["jobs"]["train"].update(enabled=True, backoffLimit=2))
    stderr = renderer.error(values)
    assert "jobs.train.backoffLimit is 2 but the job runs on the shared cluster" in stderr, stderr
    assert "cluster: dedicated" in stderr


def test_a_rayjob_name_over_47_characters_fails_instead_of_being_cut(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["fullnameOverride"] = "team-recsys-nightly-rayline"
        v["jobs"]["trainDeepspeed"]["enabled"] = True
        v["jobs"]["runId"] = "20261130-0815"

    stderr = renderer.error(renderer.values(mutate))
    assert "RayJob name team-recsys-nightly-rayline-train-deepspeed-20261130-0815 is 57 characters" in stderr
    assert "KubeRay v1.7 allows 47" in stderr, stderr


# --- MLflow ---------------------------------------------------------------------------------------


def test_irsa_only_s3_gives_mlflows_service_account_its_role(rendered: dict[str, Manifest]) -> None:
    for example in ("irsa-s3", "production"):
        docs = rendered[example]
        mlflow_sa = one(docs, "ServiceAccount", "-mlflow")
        assert mlflow_sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/rayline-mlflow")
        pod = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == mlflow_sa["metadata"]["name"]
        env = env_of(pod["containers"][0])
        assert "AWS_ACCESS_KEY_ID" not in env and env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")


def test_external_database_is_migrated_once_by_a_hook_job_before_the_servers(rendered) -> None:
    docs = rendered["production"]
    job = one(docs, "Job", "-db-upgrade")
    hooks = job["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == 'exec mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"'
    assert env_of(container)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "rayline-mlflow-db"
    deployment = one(docs, "Deployment", "-mlflow")["spec"]
    assert deployment["replicas"] == 2 and "initContainers" not in deployment["template"]["spec"]


@pytest.mark.timeout(180)
def test_the_rendered_migration_command_creates_then_upgrades_a_real_database(rendered, tmp_path) -> None:
    """The hook's exact command, run by the installed MLflow against SQLite (PostgreSQL is not here):
    an empty database gets MLflow's tables, a second run (the next upgrade) is a no-op."""
    command = one(rendered["production"], "Job", "-db-upgrade")["spec"]["template"]["spec"]["containers"][0]["command"]
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{db}"}
    for _ in range(2):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        [(revision,)] = conn.execute("select version_num from alembic_version").fetchall()
        tables = {name for (name,) in conn.execute("select name from sqlite_master where type='table'")}
    assert revision and {"experiments", "runs", "registered_models", "model_versions"} <= tables


def test_bundled_database_is_migrated_by_the_server_pod_before_it_starts(rendered) -> None:
    docs = rendered["default"]
    assert not by_kind(docs, "Job")
    pod = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert "mlflow db upgrade" in init["command"][-1]
    assert env_of(init)["MLFLOW_BACKEND_STORE_URI"] == env_of(pod["containers"][0])["MLFLOW_BACKEND_STORE_URI"]


# --- Upgrades of running clusters ---------------------------------------------------------------


def test_clusters_declare_how_kuberay_upgrades_them(rendered) -> None:
    assert one(rendered["default"], "RayCluster")["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    assert one(rendered["default"], "RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    incremental = one(rendered["incremental-upgrade"], "RayService")["spec"]["upgradeStrategy"]
    assert incremental == {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {
        "maxSurgePercent": 20, "stepSizePercent": 10, "intervalSeconds": 30, "gatewayClassName": "istio"}}


@pytest.mark.parametrize("example", ["default", "production"])
def test_no_dead_health_threshold_fields(rendered, example: str) -> None:
    spec = one(rendered[example], "RayService")["spec"]
    assert "serviceUnhealthySecondThreshold" not in spec and "deploymentUnhealthySecondThreshold" not in spec


def test_the_removed_threshold_values_are_refused_by_name(renderer) -> None:
    stderr = renderer.error(renderer.values(lambda v: v["serving"].update(serviceUnhealthySecondThreshold=900)))
    assert "additional properties 'serviceUnhealthySecondThreshold'" in stderr, stderr


# --- Pods -----------------------------------------------------------------------------------------


def test_a_worker_group_without_shm_size_renders_a_valid_cluster(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        del v["rayCluster"]["workerGroups"][0]["shmSize"]
        del v["serving"]["head"]["shmSize"]

    docs = renderer.render(renderer.values(mutate))
    for kind in ("RayCluster", "RayService"):
        doc = one(docs, kind)
        assert not crd_errors(doc), crd_errors(doc)[:3]
        for template in _cluster_pods(doc):
            dshm = next(v for v in template["spec"]["volumes"] if v["name"] == "dshm")
            assert dshm["emptyDir"].get("sizeLimit", "set") is not None


def test_default_serving_workers_request_no_gpu(rendered) -> None:
    service = one(rendered["default"], "RayService")
    for template in _cluster_pods(service):
        resources = template["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]
        assert not template["spec"].get("tolerations")


def test_serving_head_hosts_no_replicas_and_gcs_ft_uses_redis_by_reference(rendered) -> None:
    for example in ("default", "gcs-ft"):
        head = one(rendered[example], "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
    cluster = one(rendered["gcs-ft"], "RayService")["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis-master.rayline.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "rayline-redis", "key": "password"}}},
    }
    assert "gcsFaultToleranceOptions" not in one(rendered["default"], "RayService")["spec"]["rayClusterConfig"]


def _cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_the_serving_app_fits_on_the_serving_workers(rendered, example: str) -> None:
    """The head takes no replicas (num-cpus 0): the app's CPUs must fit the workers at full scale."""
    service = one(rendered[example], "RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    variants = 2 if args.get("candidate") else 1
    models = 0 if args["colocate"] else variants * args["replicas"] * args["num_cpus"]
    sized_as = ("replicas", "num_cpus") if args["colocate"] else ("router_replicas", "router_num_cpus")
    router = args[sized_as[0]] * args[sized_as[1]]
    needed = models + router + 0.05  # + the rollout controller (or the static traffic deployment)
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    capacity = sum(g["maxReplicas"] * _cpus(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
                   for g in workers)
    assert needed <= capacity, f"{example}: the app needs {needed} CPUs, the serving workers have {capacity}"


def test_gcs_ft_without_a_redis_address_fails(renderer) -> None:
    stderr = renderer.error(renderer.values(lambda v: v["serving"]["gcsFaultTolerance"].update(enabled=True)))
    assert "at '/serving/gcsFaultTolerance/redisAddress': minLength" in stderr, stderr


EXTENSIONS = {
    "podLabels": {"team": "recsys"},
    "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "priorityClassName": "rayline-high",
    "runtimeClassName": "nvidia",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "extraEnv": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
                 {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    "envFrom": [{"configMapRef": {"name": "team-env"}}],
    "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}}],
    "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
}


def test_every_group_takes_the_extension_points_and_stays_valid(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        for section in ("rayCluster", "serving"):
            v[section]["head"].update(EXTENSIONS)
            v[section]["workerGroups"][0].update(EXTENSIONS)
        v["rayCluster"]["labels"] = {"kueue.x-k8s.io/queue-name": "training"}
        v["jobs"]["defaults"]["labels"] = {"kueue.x-k8s.io/queue-name": "training"}
        v["jobs"]["hello"]["enabled"] = True
        v["settings"]["extraEnv"] = [{"name": "TEAM", "value": "recsys"}]

    docs = renderer.render(renderer.values(mutate))
    assert one(docs, "RayCluster")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
    assert one(docs, "RayJob")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
    for kind in ("RayCluster", "RayService"):
        doc = one(docs, kind)
        assert not crd_errors(doc), crd_errors(doc)[:3]
        for template in _cluster_pods(doc):
            spec, container = template["spec"], template["spec"]["containers"][0]
            assert template["metadata"]["labels"]["team"] == "recsys"
            assert template["metadata"]["annotations"] == EXTENSIONS["podAnnotations"]
            assert (spec["priorityClassName"], spec["runtimeClassName"]) == ("rayline-high", "nvidia")
            assert spec["topologySpreadConstraints"] == EXTENSIONS["topologySpreadConstraints"]
            env = env_of(container)
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
            assert env["TEAM"]["value"] == "recsys" and "POD_IP" in env
            assert container["envFrom"] == EXTENSIONS["envFrom"]
            assert EXTENSIONS["extraVolumes"][0] in spec["volumes"]
            assert EXTENSIONS["extraVolumeMounts"][0] in container["volumeMounts"]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template["metadata"]}, "spec": spec}
            kubernetes_validate.validate(pod, "1.35.0", strict=True)


def test_extra_env_needs_a_value_or_a_value_from(renderer) -> None:
    values = renderer.values(lambda v: v["settings"].update(extraEnv=[{"name": "FOO"}, {"name": "BAR", "value": "1"}]))
    assert renderer.render(values)  # a name alone is a valid EnvVar (empty value)
    bad = renderer.values(lambda v: v["settings"].update(extraEnv=[{"name": "FOO", "valueFrom": {"secretRef": {}}}]))
    assert "at '/settings/extraEnv/0/valueFrom'" in renderer.error(bad)


# --- Monitoring -----------------------------------------------------------------------------------


def test_head_pods_expose_and_monitors_scrape_the_autoscaler_and_dashboard_ports(rendered) -> None:
    docs = rendered["production"]
    head_monitor = one(docs, "PodMonitor", "-ray-head")
    assert [e["port"] for e in head_monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "as-metrics", "dash-metrics"]
    for kind in ("RayCluster", "RayService"):
        head = _cluster_pods(one(docs, kind))[0]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in head["ports"]}
        assert (ports["as-metrics"], ports["dash-metrics"]) == (44217, 44227)
    ray_policy = one(docs, "NetworkPolicy", "-ray")["spec"]["ingress"]
    from_ns = [(r, r["from"][0].get("namespaceSelector", {}).get("matchLabels", {})) for r in ray_policy]
    monitoring = next(r for r, ns in from_ns if ns.get("kubernetes.io/metadata.name") == "monitoring")
    assert {p["port"] for p in monitoring["ports"]} == {8080, 44217, 44227}


def test_alerts_fire_for_a_failed_rayjob_and_gpu_workers_stuck_pending(rendered) -> None:
    rule = one(rendered["production"], "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    failed = alerts["RaylineRayJobFailed"]["expr"]
    assert "kuberay_job_deployment_status" in failed and 'deployment_status=~"Failed|ValidationFailed"' in failed
    pending = alerts["RaylineGpuWorkersPending"]
    assert 'phase="Pending"' in pending["expr"] and 'resource="nvidia_com_gpu"' in pending["expr"]
    assert pending["for"] == "15m"


# --- First install --------------------------------------------------------------------------------


def test_notes_say_what_to_run_first_when_no_model_is_registered() -> None:
    result = run_helm("install", "rl", "helm/rayline", "--namespace", "rayline", "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    first = notes.split("First run", 1)[1]
    assert "--set jobs.ingest.enabled=true --set jobs.train.enabled=true" in first
    assert "rayline models alias customers-churn champion <version>" in first
    assert "rayline models alias customers-churn challenger <version>" in first


def test_rendered_hook_job_and_pod_template_labels_are_plain_yaml(rendered) -> None:
    """The hook Job is a built-in object: strict Kubernetes validation, as for every other one."""
    job = one(rendered["production"], "Job", "-db-upgrade")
    kubernetes_validate.validate(yaml.safe_load(yaml.safe_dump(job)), "1.29.0", strict=True)
