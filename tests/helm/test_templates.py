"""Template logic where it branches, and the chart's security defaults.

Each test renders the real chart with real helm and inspects the objects; nothing is mocked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from cluster.serve_ingress import RETRY_ON
from tests.helm.conftest import CHART, EXAMPLES, Manifest, by_kind, env_of, one, pod_specs

# --- MLflow backend: bundled PostgreSQL vs external database --------------------------------


def test_bundled_database_runs_postgres_and_builds_the_uri_from_a_secret(renderer) -> None:
    docs = renderer.render(renderer.values(lambda v: v["mlflow"]["database"].update(type="bundled")))
    postgres = one(docs, "StatefulSet", "-postgres")
    pg = postgres["spec"]["template"]["spec"]
    assert env_of(pg["containers"][0])["POSTGRES_PASSWORD_FILE"]["value"] == "/etc/postgres-secret/password"
    assert pg["volumes"][0]["secret"]["secretName"] == "rayline-postgres"
    one(docs, "Service", "-postgres")
    one(docs, "NetworkPolicy", "-postgres")

    env = env_of(one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "rayline-postgres", "key": "password"}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == (
        "postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@rl-rayline-postgres:5432/mlflow"
    )


def test_external_database_reads_the_uri_from_a_secret_and_runs_no_postgres(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["mlflow"]["database"]["type"] = "external"
        v["mlflow"]["database"]["external"] = {"uriSecret": "prod-db", "uriKey": "sqlalchemy-uri"}

    docs = renderer.render(renderer.values(mutate))
    assert not by_kind(docs, "StatefulSet")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-postgres")]
    env = env_of(one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "prod-db", "key": "sqlalchemy-uri"}
    assert "MLFLOW_DB_PASSWORD" not in env


# --- MLflow basic auth on / off ---------------------------------------------------------------


def _ray_containers(docs: Manifest) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        if doc["kind"] in {"RayCluster", "RayService", "RayJob"}:
            for where, spec in pod_specs(doc):
                if "submitterPodTemplate" not in where:
                    out += spec["containers"]
    return out


def test_auth_on_runs_basic_auth_and_gives_ray_pods_client_credentials(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["mlflow"]["auth"] = {"enabled": True, "serverSecret": "mlf-server", "clientSecret": "mlf-client"}

    docs = renderer.render(renderer.values(mutate))
    pod = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]
    mlflow = pod["containers"][0]
    assert "--app-name=basic-auth" in mlflow["args"]
    env = env_of(mlflow)
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    for name, key in [
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key"),
    ]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlf-server", "key": key}
    assert {
        "name": "auth-config",
        "secret": {"secretName": "mlf-server", "items": [{"key": "basic_auth.ini", "path": "basic_auth.ini"}]},
    } in pod["volumes"]

    ray = _ray_containers(docs)
    assert ray
    for container in ray:
        env = env_of(container)
        assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "mlf-client", "key": "username"}
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlf-client", "key": "password"}


def test_auth_off_leaves_no_auth_settings_anywhere(renderer) -> None:
    docs = renderer.render(renderer.values(lambda v: v["mlflow"]["auth"].update(enabled=False)))
    mlflow = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in mlflow["args"] if a.startswith("--app-name")]
    assert "MLFLOW_AUTH_CONFIG_PATH" not in env_of(mlflow)
    for container in _ray_containers(docs):
        assert "MLFLOW_TRACKING_USERNAME" not in env_of(container)
        assert env_of(container)["MLFLOW_TRACKING_URI"]["value"] == "http://rl-rayline-mlflow.rayline.svc:5000"


# --- GPU on / off -----------------------------------------------------------------------------


def _worker_groups(docs: Manifest) -> list[dict[str, Any]]:
    return one(docs, "RayCluster")["spec"]["workerGroupSpecs"]


def test_gpu_workers_request_and_limit_nvidia_gpus(renderer) -> None:
    docs = renderer.render(renderer.values(lambda v: v["rayCluster"]["workerGroups"][0].update(gpus=4)))
    group = _worker_groups(docs)[0]
    res = group["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 4 and res["limits"]["nvidia.com/gpu"] == 4
    assert res["limits"]["memory"] == "32Gi"  # the group's own resources are kept
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"][
        "tolerations"
    ]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 4)


def test_cpu_workers_have_no_gpu_resources(rendered: dict[str, Manifest]) -> None:
    text = yaml.safe_dump_all(rendered["laptop"])
    assert "nvidia.com/gpu" not in text


def test_gpu_setting_of_one_group_does_not_leak_into_defaults(renderer) -> None:
    """deepCopy in the template: adding the GPU must not mutate the shared values."""
    docs = renderer.render(renderer.values(lambda v: v["jobs"]["train"].update(enabled=True, cluster="dedicated")))
    job = one(docs, "RayJob")
    cluster_res = _worker_groups(docs)[0]["template"]["spec"]["containers"][0]["resources"]
    job_res = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    assert cluster_res == job_res
    assert cluster_res["limits"]["nvidia.com/gpu"] == 1


# --- RayJobs: shared cluster vs dedicated cluster, names, entrypoints ------------------------


def test_shared_job_runs_on_the_raycluster_and_does_not_shut_it_down(renderer) -> None:
    docs = renderer.render(
        renderer.values(lambda v: v["jobs"]["ingest"].update(enabled=True, args=["--source", "s3://b/raw"]))
    )
    spec = one(docs, "RayJob", "-ingest")["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": one(docs, "RayCluster")["metadata"]["name"]}
    assert "rayClusterSpec" not in spec and "shutdownAfterJobFinishes" not in spec
    assert spec["entrypoint"] == "python -m jobs.ingest '--source' 's3://b/raw'"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["submitterConfig"] == {"backoffLimit": 2}
    assert spec["preRunningDeadlineSeconds"] == 600
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert env_of(submitter)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "rayline-ray-auth",
        "key": "auth_token",
    }


def test_dedicated_job_brings_its_own_cluster_and_deletes_it(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["jobs"]["trainDeepspeed"].update(
            enabled=True,
            cluster="dedicated",
            activeDeadlineSeconds=3600,
            runtimeEnv={"env_vars": {"NCCL_DEBUG": "WARN"}},
        )
        v["jobs"]["runId"] = "r42"

    job = one(renderer.render(renderer.values(mutate)), "RayJob")
    assert job["metadata"]["name"] == "rl-rayline-train-deepspeed-r42"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 300
    assert spec["activeDeadlineSeconds"] == 3600
    assert "clusterSelector" not in spec
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"env_vars": {"NCCL_DEBUG": "WARN"}}
    assert spec["entrypoint"] == "python -m jobs.train '--config' '/app/examples/train/gpt_deepspeed_zero2.yaml'"


def test_only_enabled_jobs_render_and_one_can_be_rendered_alone(renderer, rendered: dict[str, Manifest]) -> None:
    assert not by_kind(rendered["default"], "RayJob")
    assert [d["metadata"]["name"] for d in by_kind(rendered["laptop"], "RayJob")] == ["rl-rayline-hello"]
    values = renderer.values(lambda v: v["jobs"]["evaluate"].update(enabled=True))
    alone = renderer.render(values, "--show-only", "templates/rayjobs.yaml")
    assert [d["kind"] for d in alone] == ["RayJob"]


# --- Storage: PVC vs S3 -----------------------------------------------------------------------


def test_pvc_storage_mounts_one_claim_in_every_ray_pod(rendered: dict[str, Manifest]) -> None:
    docs = rendered["default"]
    claim = one(docs, "PersistentVolumeClaim", "-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for container in _ray_containers(docs):
        assert {"name": "shared", "mountPath": "/mnt/rayline"} in container["volumeMounts"]
        assert env_of(container)["RAYLINE_CHECKPOINTS_ROOT"]["value"] == "/mnt/rayline/checkpoints"


def test_s3_storage_points_roots_at_the_bucket_with_credentials_by_reference(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["storage"]["type"] = "s3"
        v["storage"]["s3"].update(bucket="ckpt", prefix="team", endpointUrl="http://minio:9000", credentialsSecret="s3")
        v["serving"]["state"]["existingClaim"] = "serve-state"

    docs = renderer.render(renderer.values(mutate))
    assert not by_kind(docs, "PersistentVolumeClaim")
    for container in _ray_containers(docs):
        env = env_of(container)
        assert env["RAYLINE_CHECKPOINTS_ROOT"]["value"] == "s3://ckpt/team/checkpoints"
        assert env["RAYLINE_DATASETS_ROOT"]["value"] == "s3://ckpt/team/datasets"
        assert env["RAYLINE_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "secret-access-key"}
        assert all(m["name"] != "shared" for m in container["volumeMounts"])


# --- Serving ----------------------------------------------------------------------------------


def test_rayservice_passes_build_app_args_from_values(rendered: dict[str, Manifest]) -> None:
    service = one(rendered["production"], "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    [app] = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    args = app["args"]
    assert args["model_name"] == "customers-churn"
    assert (args["baseline"], args["candidate"]) == ("models:/customers-churn@champion",
                                                     "models:/customers-churn@challenger")
    assert (args["replicas"], args["num_cpus"], args["router_replicas"]) == (2, 2, 2)
    assert args["state_dir"] == "/mnt/rayline-state"  # S3 storage: the serving state claim
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    for container in _ray_containers([service]):
        assert env_of(container)["RAYLINE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "rayline-admin-token",
            "key": "token",
        }
        assert {"name": "serve-state", "mountPath": "/mnt/rayline-state"} in container["volumeMounts"]


def test_static_traffic_without_controller_and_no_candidate(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["serving"]["app"].update(controller=False, candidateAlias="", traffic={"baseline": 1}, stickyField="")

    docs = renderer.render(renderer.values(mutate))
    args = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["controller"] is False and args["traffic"] == {"baseline": 1}
    assert "candidate" not in args and "shadow" not in args and args["sticky_field"] is None
    assert not [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-rollout-spec")]


def test_s3_storage_needs_a_claim_for_the_rollout_state(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["storage"]["type"] = "s3"
        v["storage"]["s3"]["bucket"] = "b"

    assert "serving.state.existingClaim" in renderer.error(renderer.values(mutate))


# --- Security defaults ------------------------------------------------------------------------


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_container_is_non_root_read_only_capability_free_and_bounded(rendered, example: str) -> None:
    """Covers the Ray pod templates inside the CRDs too, which checkov does not scan."""
    pods = [p for doc in rendered[example] for p in pod_specs(doc)]
    assert len(pods) >= 6
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"], where
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}/{c['name']} {kind}"
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{where}: no writable /tmp"
    for doc in rendered[example]:
        spec = doc.get("spec", {})
        options = spec.get("autoscalerOptions") or spec.get("rayClusterConfig", {}).get("autoscalerOptions")
        if options:
            assert options["securityContext"]["readOnlyRootFilesystem"] and options["resources"]["limits"]


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_secrets_are_only_referenced(rendered, example: str) -> None:
    for doc in rendered[example]:
        for where, pod in pod_specs(doc):
            for c in pod["containers"]:
                for e in c.get("env", []):
                    if any(word in e["name"] for word in ("PASSWORD", "TOKEN", "SECRET", "ACCESS_KEY")):
                        assert "valueFrom" in e or e["value"].startswith("/"), f"{where}: {e['name']} is a literal"


def test_ray_token_auth_is_on_everywhere(rendered: dict[str, Manifest]) -> None:
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] == "RayCluster":
                assert doc["spec"]["authOptions"] == {"mode": "token", "secretName": "rayline-ray-auth"}
            if doc["kind"] == "RayService":
                assert doc["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"


def test_only_the_autoscaler_head_gets_an_api_token_and_least_privilege(rendered: dict[str, Manifest]) -> None:
    docs = rendered["default"]
    cluster = one(docs, "RayCluster")["spec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert cluster["workerGroupSpecs"][0]["template"]["spec"]["automountServiceAccountToken"] is False
    for sa in by_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    role = one(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "list", "watch", "patch"]},
    ]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")


def test_no_autoscaling_means_no_rbac_and_no_token(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["rayCluster"]["autoscaling"]["enabled"] = False
        v["serving"]["autoscaling"]["enabled"] = False

    docs = renderer.render(renderer.values(mutate))
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "autoscalerOptions" not in one(docs, "RayCluster")["spec"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_pod_is_covered_by_a_network_policy(rendered, example: str) -> None:
    docs = rendered[example]
    policies = by_kind(docs, "NetworkPolicy")
    assert policies
    for doc in docs:
        for where, _pod in pod_specs(doc):
            path = where.split(".")
            # the pod's labels sit beside its spec in the template (paths are relative to .spec)
            node: Any = doc["spec"]
            for key in path[1:-1]:
                name, _, index = key.partition("[")
                node = node[name] if not index else node[name][int(index.rstrip("]"))]
            labels = node["metadata"]["labels"]
            assert any(_selects(p["spec"]["podSelector"], labels) for p in policies), f"{where} has no NetworkPolicy"


def test_postgres_only_accepts_mlflow_and_talks_to_no_one(rendered: dict[str, Manifest]) -> None:
    policy = one(rendered["default"], "NetworkPolicy", "-postgres")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    [rule] = policy["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]


# --- Monitoring -------------------------------------------------------------------------------


def test_podmonitors_scrape_port_8080_of_ray_heads_workers_and_serving(rendered: dict[str, Manifest]) -> None:
    docs = rendered["production"]
    monitors = {d["metadata"]["name"].removeprefix("rl-rayline-"): d for d in by_kind(docs, "PodMonitor")}
    assert {"ray-head", "ray-workers", "serve", "mlflow"} <= set(monitors)
    for name in ("ray-head", "ray-workers", "serve"):
        assert monitors[name]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert monitors[name]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for container in _ray_containers(docs):
        assert {"name": "metrics", "containerPort": 8080} in container["ports"]
    # the serve monitor selects serving workers only; the workers monitor training workers only
    serve_worker = {
        "app.kubernetes.io/instance": "rl",
        "ray.io/node-type": "worker",
        "app.kubernetes.io/component": "ray-serve",
    }
    assert _selects(monitors["serve"]["spec"]["selector"], serve_worker)
    assert not _selects(monitors["ray-workers"]["spec"]["selector"], serve_worker)


def test_alert_rules_cover_error_rate_and_latency_per_variant(rendered: dict[str, Manifest]) -> None:
    rule = one(rendered["production"], "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    error = alerts["RaylineServeHighErrorRate"]["expr"]
    assert 'ray_rayline_serve_requests_total{namespace="rayline", code=~"5.."}' in error and "> 0.02" in error
    assert "ray_rayline_serve_request_latency_seconds_bucket" in alerts["RaylineServeHighLatencyP99"]["expr"]
    assert "> 0.5" in alerts["RaylineServeHighLatencyP99"]["expr"]
    assert "{{ $labels.variant }}" in alerts["RaylineServeHighErrorRate"]["annotations"]["description"]


def test_grafana_dashboards_are_valid_json_configmaps(rendered: dict[str, Manifest]) -> None:
    maps = [
        d for d in by_kind(rendered["default"], "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    ours = [m for m in maps if m["metadata"]["labels"]["rayline.io/dashboard-source"] == "rayline"]
    assert len(ours) == len(list((CHART / "dashboards").glob("*.json"))) == 3  # serving, cluster, llm
    for cm in ours:
        for body in cm["data"].values():
            dashboard = json.loads(body)
            assert dashboard["uid"].startswith("rayline") and dashboard["panels"]
            assert all(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # which names the panels query, and that they exist, is tests/helm/test_metric_names.py


def test_monitoring_off_renders_no_prometheus_objects(rendered: dict[str, Manifest]) -> None:
    kinds = {d["kind"] for d in rendered["laptop"]}
    assert not kinds & {"PodMonitor", "PrometheusRule"}
    assert not [d for d in by_kind(rendered["laptop"], "ConfigMap") if "dashboard" in d["metadata"]["name"]]


def _ray_containers_env(doc: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    return [env_of(spec["containers"][0]) for _, spec in pod_specs(doc)]


def test_serving_pods_run_serves_proxy_by_default_and_haproxy_when_asked(renderer) -> None:
    """Every RayService pod (head and workers) starts Ray with the ingress ``serving.ingress`` names: Serve's proxy
    by default, HAProxy with the chart's drain period when asked; the training RayCluster is left alone."""
    docs = renderer.render()
    serving = _ray_containers_env(one(docs, "RayService"))
    assert len(serving) >= 2, "the head and at least one worker group"
    for env in serving:
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "0"
        assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in env
    for env in _ray_containers_env(one(docs, "RayCluster")):
        assert "RAY_SERVE_ENABLE_HA_PROXY" not in env

    haproxy = renderer.render(renderer.values(lambda v: v["serving"].update(ingress="haproxy")))
    for env in _ray_containers_env(one(haproxy, "RayService")):
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]["value"] == "10"
        assert env["RAY_SERVE_HAPROXY_RETRY_ON"]["value"] == RETRY_ON   # what a local stack runs with
    error = renderer.error(renderer.values(lambda v: v["serving"].update(ingress="nginx")))
    assert "ingress" in error and "haproxy" in error, error


def _named_ports(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [port for _, spec in pod_specs(doc) for port in spec["containers"][0].get("ports", [])]


def test_haproxys_metrics_port_is_named_scraped_and_admitted_on_serving_pods_only_when_it_runs(renderer) -> None:
    """Behind HAProxy each serving pod's HAProxy exports requests, 5xx and retries per backend on
    ``serving.haproxyMetricsPort``: a named container port, an endpoint of the PodMonitors that select serving pods,
    and a port the NetworkPolicy opens to the monitoring namespace. Behind Serve's proxy none of it exists, and the
    training RayCluster never gets it."""
    haproxy = renderer.render(renderer.values(lambda v: v["serving"].update(ingress="haproxy",
                                                                              haproxyMetricsPort=9191)))
    for env in _ray_containers_env(one(haproxy, "RayService")):
        assert env["RAY_SERVE_HAPROXY_METRICS_PORT"]["value"] == "9191"
    serving_ports = _named_ports(one(haproxy, "RayService"))
    assert serving_ports.count({"name": "haproxy-metrics", "containerPort": 9191}) == len(
        pod_specs(one(haproxy, "RayService"))), "every serving pod names HAProxy's port"
    assert all(p["name"] != "haproxy-metrics" for p in _named_ports(one(haproxy, "RayCluster")))
    monitors = {d["metadata"]["name"].split("-rayline-")[-1]: [e["port"] for e in d["spec"]["podMetricsEndpoints"]]
                for d in by_kind(haproxy, "PodMonitor")}
    assert "haproxy-metrics" in monitors["serve"] and "haproxy-metrics" in monitors["ray-head"]
    assert "haproxy-metrics" not in monitors["ray-workers"]
    opened = [rule["from"] for rule in one(haproxy, "NetworkPolicy", "-ray")["spec"]["ingress"]
              if {"port": 9191, "protocol": "TCP"} in rule.get("ports", [])]
    assert opened == [[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]], opened

    proxy = renderer.render()
    assert all(p["name"] != "haproxy-metrics" for p in _named_ports(one(proxy, "RayService")))
    assert all("haproxy-metrics" not in json.dumps(d) for d in by_kind(proxy, "PodMonitor"))
    assert "9191" not in json.dumps(one(proxy, "NetworkPolicy", "-ray")) and "9101" not in json.dumps(
        one(proxy, "NetworkPolicy", "-ray"))
