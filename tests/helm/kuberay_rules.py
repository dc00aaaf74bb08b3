"""KubeRay v1.7.0's controller validation, restated for the objects this chart renders.

The CRD schemas catch wrong types and unknown fields; the operator then runs its own checks
(`ray-operator/controllers/ray/utils/validation.go` at tag v1.7.0, read from
github.com/ray-project/kuberay) and puts an object that fails them into `ValidationFailed`
while `helm install` has already reported success. These are those rules, written again
here (no KubeRay code is copied) for the fields the chart can produce, each with the Go
function it comes from. `violations(doc)` returns `(rule id, message)` pairs; the chart tests
run it on every rendered values file and give every rule a failing example.

Left out: rules on fields the chart never renders (deletionStrategy, historyServerOptions,
networkPolicy, tlsOptions, RayCronJob, rocksdb GCS storage, SidecarMode internals) and
feature-gate state, which only the operator knows: `NewClusterWithIncrementalUpgrade` also
needs the operator's `RayServiceIncrementalUpgrade` gate and the Gateway API (see the chart
README).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import yaml

MAX_RAYCLUSTER_NAME = 53  # constant.go MaxRayClusterNameLength
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6  # MaxRayJobNameLength
MAX_RAYSERVICE_NAME = MAX_RAYCLUSTER_NAME - 6  # MaxRayServiceNameLength
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")
AUTOSCALER_V2_ENV = "RAY_enable_autoscaler_v2"
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)

Violation = tuple[str, str]
Spec = dict[str, Any]


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(p or 0) for p in match.groups()) if match else None


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def _head_container(spec: Spec) -> dict[str, Any]:
    containers = spec["headGroupSpec"]["template"]["spec"].get("containers") or [{}]
    return containers[0]


def _autoscaling(spec: Spec) -> bool:
    return bool(spec.get("enableInTreeAutoscaling"))


def _autoscaler_v2(spec: Spec) -> bool:
    """utils.IsAutoscalingV2Enabled: autoscalerOptions.version v2, or the head's env opt-in."""
    if not _autoscaling(spec):
        return False
    if (spec.get("autoscalerOptions") or {}).get("version") == "v2":
        return True
    return _env(_head_container(spec)).get(AUTOSCALER_V2_ENV, {}).get("value") in ("1", "true")


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(DNS1123.match(p) for p in prefix.split("."))):
        return False
    return 0 < len(name) <= 63 and bool(LABEL_NAME.match(name))


def _groups(spec: Spec) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "Head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs") or []:
        yield group.get("groupName", "?"), group


def cluster_spec_violations(spec: Spec, annotations: dict[str, str]) -> list[Violation]:
    """ValidateRayClusterSpec, for the fields this chart renders."""
    out: list[Violation] = []
    scaling = _autoscaling(spec)
    head_env = _env(_head_container(spec))
    if not spec["headGroupSpec"]["template"]["spec"].get("containers"):
        out.append(("group-containers", "headGroupSpec should have at least one container"))
    for name, group in _groups(spec):
        params = group.get("rayStartParams") or {}
        if any(params.get(k) for k in RAY_START_RESOURCES) and group.get("resources"):
            out.append(("group-resources-twice",
                        f"{name}: resources set in both rayStartParams and the group's resources field"))
        if "labels" in params:
            out.append(("group-labels", f"{name}: rayStartParams['labels'] is not supported; use the labels field"))
        for key, value in (group.get("labels") or {}).items():
            if not _valid_label_key(key) or len(str(value)) > 63 or not LABEL_VALUE.match(str(value)):
                out.append(("group-labels", f"{name}: invalid Ray label {key}={value!r}"))
        if name == "Head":
            continue
        if not group["template"]["spec"].get("containers"):
            out.append(("group-containers", f"worker group {name} should have at least one container"))
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not scaling and (low is None or high is None):
            out.append(("worker-replicas", f"worker group {name} needs min and maxReplicas without autoscaling"))
        if (low is not None and low < 0) or (high is not None and high < 0):
            out.append(("worker-replicas", f"worker group {name} has negative min/maxReplicas"))
        if low is not None and high is not None and low > high:
            out.append(("worker-replicas", f"worker group {name}: minReplicas {low} > maxReplicas {high}"))
        if not DNS1123.match(name) or len(name) > 63:
            # validateNetworkPolicy enforces this only with spec.networkPolicy; group names end up in
            # pod and Service names, so the chart holds every group to it.
            out.append(("worker-group-name", f"worker group name {name!r} is not a DNS-1123 label"))
        idle = group.get("idleTimeoutSeconds")
        if idle is not None and (idle < 0 or not _autoscaler_v2(spec)):
            out.append(("worker-idle-timeout", f"worker group {name}: idleTimeoutSeconds needs autoscaler v2 and >= 0"))
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs") or []]
    if len(names) != len(set(names)):
        out.append(("worker-group-name", f"worker group names repeat: {names}"))

    gcs_ft = spec.get("gcsFaultToleranceOptions")
    if annotations.get("ray.io/ft-enabled") and gcs_ft is not None:
        out.append(("gcs-ft", "ray.io/ft-enabled annotation and gcsFaultToleranceOptions are both set"))
    ft_on = gcs_ft is not None or annotations.get("ray.io/ft-enabled") == "true"
    if not ft_on and "RAY_REDIS_ADDRESS" in head_env:
        out.append(("gcs-ft", "RAY_REDIS_ADDRESS set on the head without gcsFaultToleranceOptions"))
    if gcs_ft is not None:
        if (spec["headGroupSpec"].get("rayStartParams") or {}).get("redis-password"):
            out.append(("gcs-ft", "redis-password in rayStartParams with gcsFaultToleranceOptions"))
        for env in ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS"):
            if env in head_env:
                out.append(("gcs-ft", f"{env} env on the head with gcsFaultToleranceOptions"))
        if annotations.get("ray.io/external-storage-namespace"):
            out.append(("gcs-ft", "ray.io/external-storage-namespace annotation with gcsFaultToleranceOptions"))
        if gcs_ft.get("backend", "redis") == "redis" and gcs_ft.get("storage") is not None:
            out.append(("gcs-ft", "gcsFaultToleranceOptions.storage only applies to the rocksdb backend"))
    if (spec["headGroupSpec"].get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in head_env:
        out.append(("gcs-ft", "redis username in rayStartParams or env; use gcsFaultToleranceOptions.redisUsername"))

    options = spec.get("autoscalerOptions") or {}
    if not scaling and head_env.get(AUTOSCALER_V2_ENV, {}).get("value") in ("1", "true"):
        out.append(("autoscaler", f"{AUTOSCALER_V2_ENV} is on while enableInTreeAutoscaling is false"))
    if scaling and options.get("version") and AUTOSCALER_V2_ENV in head_env:
        out.append(("autoscaler", f"both autoscalerOptions.version and {AUTOSCALER_V2_ENV} are set"))
    if _autoscaler_v2(spec):
        for name, group in _groups(spec):
            if group["template"]["spec"].get("restartPolicy") not in (None, "", "Never"):
                out.append(("autoscaler", f"{name}: restartPolicy must be Never or unset with autoscaler v2"))
    if options.get("idleTimeoutSeconds") is not None and options["idleTimeoutSeconds"] < 0:
        out.append(("autoscaler", "autoscalerOptions.idleTimeoutSeconds must be non-negative"))
    if any(e.get("name") == "KUBERAY_GEN_AUTOSCALER_START_CMD" for e in options.get("env") or []):
        out.append(("autoscaler", "autoscalerOptions.env must not set KUBERAY_GEN_AUTOSCALER_START_CMD"))

    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = _version(spec.get("rayVersion", ""))
        if version is None or version < MIN_RAY_FOR_TOKEN_AUTH:
            got = spec.get("rayVersion")
            out.append(("auth-ray-version", f"authOptions.mode token needs rayVersion >= 2.52.0, got {got!r}"))
    return out


def _name_rule(kind: str, limit: int) -> Callable[[dict[str, Any]], list[Violation]]:
    def check(doc: dict[str, Any]) -> list[Violation]:
        """ValidateRay{Cluster,Job,Service}Metadata: length and DNS-1035."""
        name = doc["metadata"]["name"]
        if len(name) > limit or not DNS1035.match(name):
            return [("name", f"{kind} name {name!r} must be a DNS-1035 label of at most {limit} characters")]
        return []

    return check


def raycluster_violations(doc: dict[str, Any]) -> list[Violation]:
    """ValidateRayClusterMetadata, ValidateRayClusterSpec, ValidateRayClusterUpgradeOptions."""
    out = _name_rule("RayCluster", MAX_RAYCLUSTER_NAME)(doc)
    spec = doc["spec"]
    out += cluster_spec_violations(spec, doc["metadata"].get("annotations") or {})
    kind = (spec.get("upgradeStrategy") or {}).get("type")
    if kind is not None and kind not in ("Recreate", "None"):
        out.append(("cluster-upgrade-strategy", f"RayCluster upgradeStrategy.type {kind!r} is not Recreate or None"))
    return out


def _embedded_cluster(spec: Spec, owner: str) -> list[Violation]:
    """A cluster spec inside a RayJob / RayService: no upgradeStrategy (KubeRay labels the cluster
    it creates with its origin, and ValidateRayClusterUpgradeOptions refuses one then)."""
    if (spec.get("upgradeStrategy") or {}).get("type") is not None:
        return [("cluster-upgrade-strategy", f"upgradeStrategy cannot be set on a RayCluster created by {owner}")]
    return []


def rayjob_violations(doc: dict[str, Any]) -> list[Violation]:
    """ValidateRayJobMetadata and ValidateRayJobSpec."""
    out = _name_rule("RayJob", MAX_RAYJOB_NAME)(doc)
    spec = doc["spec"]
    selector = spec.get("clusterSelector") or {}
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    mode = spec.get("submissionMode", "K8sJobMode")
    backoff = spec.get("backoffLimit")
    if spec.get("suspend") and not shutdown:
        out.append(("job-shutdown", "a suspended RayJob needs shutdownAfterJobFinishes"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        out.append(("job-shutdown", "ttlSecondsAfterFinished must be non-negative"))
    if not shutdown and ttl > 0:
        out.append(("job-shutdown", "ttlSecondsAfterFinished without shutdownAfterJobFinishes"))
    if not selector and spec.get("rayClusterSpec") is None:
        out.append(("job-cluster", "one of rayClusterSpec or clusterSelector must be set"))
    if selector:
        if spec.get("suspend"):
            out.append(("job-cluster", "clusterSelector mode does not support suspend"))
        if not selector.get("ray.io/cluster"):
            out.append(("job-cluster", "clusterSelector needs a non-empty ray.io/cluster"))
        if mode == "SidecarMode":
            out.append(("job-submitter", "clusterSelector is not supported in SidecarMode"))
        if backoff is not None and backoff > 0:
            out.append(("job-backoff-selector", "backoffLimit > 0 is incompatible with clusterSelector"))
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        out.append(("job-submitter", "backoffLimit > 0 is incompatible with InteractiveMode"))
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        out.append(("job-submitter", "SidecarMode supports neither submitterPodTemplate nor submitterConfig"))
    if spec.get("rayClusterSpec") is not None:
        out += cluster_spec_violations(spec["rayClusterSpec"], doc["metadata"].get("annotations") or {})
        out += _embedded_cluster(spec["rayClusterSpec"], "RayJob")
    if spec.get("runtimeEnvYAML"):
        try:
            yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as exc:
            out.append(("job-runtime-env", f"runtimeEnvYAML is not YAML: {exc}"))
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(field) is not None and spec[field] <= 0:
            out.append(("job-deadlines", f"{field} must be a positive integer"))
    if backoff is not None and backoff < 0:
        out.append(("job-deadlines", "backoffLimit must be non-negative"))
    return out


def serve_config_violations(text: str) -> list[Violation]:
    """serveConfigV2 as KubeRay submits it (yaml.Unmarshal, then Serve's ServeDeploySchema)."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [("serve-config", f"serveConfigV2 is not YAML: {exc}")]
    if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
        return [("serve-config", "serveConfigV2 needs an applications list")]
    out: list[Violation] = []
    apps = config["applications"]
    names = [a.get("name") for a in apps]
    prefixes = [a.get("route_prefix", "/") for a in apps if a.get("route_prefix") is not None]
    if len(set(names)) != len(names) or len(set(prefixes)) != len(prefixes):
        out.append(("serve-config", "application names and route prefixes must be unique"))
    for app in apps:
        if not app.get("import_path"):
            out.append(("serve-config", f"application {app.get('name')!r} has no import_path"))
    return out


def rayservice_violations(doc: dict[str, Any]) -> list[Violation]:
    """ValidateRayServiceMetadata, ValidateRayServiceSpec and ValidateClusterUpgradeOptions."""
    out = _name_rule("RayService", MAX_RAYSERVICE_NAME)(doc)
    annotations = doc["metadata"].get("annotations") or {}
    timeout = annotations.get("ray.io/initializing-timeout")
    if timeout is not None and not re.match(r"^([1-9]\d*|\d+(\.\d+)?(ns|us|ms|s|m|h))+$", timeout):
        out.append(("serve-initializing-timeout", f"ray.io/initializing-timeout {timeout!r} is not a duration"))
    spec = doc["spec"]
    cluster = spec["rayClusterConfig"]
    out += cluster_spec_violations(cluster, annotations)
    out += _embedded_cluster(cluster, "RayService")
    if ((cluster["headGroupSpec"].get("headService") or {}).get("metadata") or {}).get("name"):
        out.append(("serve-head-service", "headGroupSpec.headService.metadata.name must not be set"))
    out += serve_config_violations(spec.get("serveConfigV2") or "")
    if spec.get("rayClusterDeletionDelaySeconds") is not None and spec["rayClusterDeletionDelaySeconds"] < 0:
        out.append(("serve-upgrade-strategy", "rayClusterDeletionDelaySeconds must be non-negative"))
    strategy = spec.get("upgradeStrategy") or {}
    kind = strategy.get("type")
    if kind is not None and kind not in ("NewClusterWithIncrementalUpgrade", "NewCluster", "None"):
        out.append(("serve-upgrade-strategy", f"upgradeStrategy.type {kind!r} is not a RayService upgrade type"))
    if kind == "NewClusterWithIncrementalUpgrade":
        out += incremental_upgrade_violations(cluster, strategy.get("clusterUpgradeOptions"))
    for field in ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"):
        if field in spec:
            # Not a validation error: deprecated and ignored since v1.1 (kuberay#1685), so a value
            # there is a setting that does nothing.
            out.append(("serve-dead-field", f"{field} is ignored by KubeRay v1.7 (kuberay#1685)"))
    return out


def incremental_upgrade_violations(cluster: Spec, options: dict[str, Any] | None) -> list[Violation]:
    """ValidateClusterUpgradeOptions."""
    if not _autoscaling(cluster):
        return [("serve-upgrade-strategy", "NewClusterWithIncrementalUpgrade needs the Ray autoscaler")]
    if options is None:
        return [("serve-upgrade-strategy", "NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions")]
    surge = options.get("maxSurgePercent", 100)
    step = options.get("stepSizePercent")
    out: list[Violation] = []
    if not 0 <= surge <= 100:
        out.append(("serve-upgrade-strategy", "maxSurgePercent must be between 0 and 100"))
    if step is None or not 0 <= step <= 100:
        out.append(("serve-upgrade-strategy", "stepSizePercent must be between 0 and 100"))
    elif step > surge:
        out.append(("serve-upgrade-strategy", "stepSizePercent must be <= maxSurgePercent"))
    if not options.get("intervalSeconds") or options["intervalSeconds"] <= 0:
        out.append(("serve-upgrade-strategy", "intervalSeconds must be greater than 0"))
    if not options.get("gatewayClassName"):
        out.append(("serve-upgrade-strategy", "gatewayClassName is required"))
    return out


CHECKS: dict[str, Callable[[dict[str, Any]], list[Violation]]] = {
    "RayCluster": raycluster_violations,
    "RayJob": rayjob_violations,
    "RayService": rayservice_violations,
}


def violations(doc: dict[str, Any]) -> list[Violation]:
    """Every rule `doc` breaks ([] for objects KubeRay does not own)."""
    check = CHECKS.get(doc.get("kind", ""))
    return check(doc) if check else []
