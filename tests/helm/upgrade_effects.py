"""What a `helm upgrade` from one render to another does to running pods and kept data.

KubeRay decides from a hash of the cluster spec (`GenerateHashWithoutReplicasAndWorkersToDelete`
in ray-operator/controllers/ray/utils/util.go, v1.7.0): the spec without worker replicas,
min/max replicas, workersToDelete, tolerations, scheduling gates and upgradeStrategy. A changed
hash gives a RayService a new cluster (its upgradeStrategy) and a RayCluster with
`upgradeStrategy: Recreate` new pods; a changed serveConfigV2 alone is applied to the running
cluster. Kubernetes rolls a Deployment or StatefulSet when its pod template changes.
`effects(before, after)` names those consequences for two rendered manifests.
"""

from __future__ import annotations

import copy
import json
from typing import Any

Manifest = list[dict[str, Any]]


def cluster_hash(spec: dict[str, Any]) -> str:
    """KubeRay's cluster hash input, as canonical JSON (equal inputs ⇔ equal hashes)."""
    muted = copy.deepcopy(spec)
    muted.pop("upgradeStrategy", None)
    muted["headGroupSpec"]["template"]["spec"].pop("tolerations", None)
    muted["headGroupSpec"]["template"]["spec"].pop("schedulingGates", None)
    for group in muted.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        group.get("scaleStrategy", {}).pop("workersToDelete", None)
        group["template"]["spec"].pop("tolerations", None)
        group["template"]["spec"].pop("schedulingGates", None)
    return json.dumps(muted, sort_keys=True)


def _by_name(docs: Manifest) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def effects(before: Manifest, after: Manifest) -> set[str]:
    """E.g. {"RayService: new cluster", "Deployment/x: pods roll"}; empty when nothing restarts."""
    out: set[str] = set()
    old, new = _by_name(before), _by_name(after)
    for key in old.keys() & new.keys():
        kind, name = key
        a, b = old[key].get("spec"), new[key].get("spec")
        if kind == "RayService":
            if cluster_hash(a["rayClusterConfig"]) != cluster_hash(b["rayClusterConfig"]):
                out.add(f"RayService: new cluster ({b['upgradeStrategy']['type']})")
            elif a["rayClusterConfig"] != b["rayClusterConfig"]:
                out.add("RayService: scaled in place")
            if a["serveConfigV2"] != b["serveConfigV2"]:
                out.add("RayService: serve config applied in place")
        elif kind == "RayCluster":
            if cluster_hash(a) != cluster_hash(b):
                strategy = b.get("upgradeStrategy", {}).get("type", "None")
                out.add("RayCluster: all pods recreated" if strategy == "Recreate"
                        else "RayCluster: running pods keep the old spec")
            elif a != b:
                out.add("RayCluster: scaled in place")
        elif kind in ("Deployment", "StatefulSet") and a["template"] != b["template"]:
            out.add(f"{kind}/{name}: pods roll")
    return out


def kept_data(before: Manifest, after: Manifest) -> list[str]:
    """Problems with the data an upgrade must keep: claims, their retention, the database volume."""
    problems = []
    old, new = _by_name(before), _by_name(after)
    for key, doc in old.items():
        if key[0] == "PersistentVolumeClaim":
            if key not in new or new[key]["spec"] != doc["spec"]:
                problems.append(f"{key[1]} changed or removed")
            elif new[key]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
                problems.append(f"{key[1]} not kept on uninstall")
        if key[0] == "StatefulSet" and new.get(key, {}).get("spec", {}).get("volumeClaimTemplates") != \
                doc["spec"]["volumeClaimTemplates"]:
            problems.append(f"{key[1]} volumeClaimTemplates changed (immutable: the upgrade would fail)")
    return problems
