"""Wrong values fail at install time with a message naming the offending key.

Real helm validates the values against values.schema.json (and the templates' `required`
/ `fail` guards); nothing is mocked.
"""

from __future__ import annotations

from typing import Any

import pytest


def _set(path: str, value: Any):
    def mutate(values: dict[str, Any]) -> None:
        node: Any = values
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("rayCluster.workerGroups.0.minReplicas", -1, "at '/rayCluster/workerGroups/0/minReplicas': minimum"),
        ("rayCluster.workerGroups.0.replicas", -3, "at '/rayCluster/workerGroups/0/replicas': minimum"),
        ("serving.workerGroups.0.maxReplicas", 0, "at '/serving/workerGroups/0/maxReplicas': minimum"),
        ("image.repository", "", "at '/image/repository': minLength"),
        ("image.tag", "latest", "at '/image/tag'"),
        ("rayCluster.workerGroups.0.gpus", "two", "at '/rayCluster/workerGroups/0/gpus': got string, want integer"),
        ("rayCluster.workerGroups.0.gpus", 1.5, "at '/rayCluster/workerGroups/0/gpus': got number, want integer"),
        ("jobs.train.module", "os.system", "at '/jobs/train/module'"),
        ("jobs.train.cluster", "elsewhere", "at '/jobs/train/cluster'"),
        ("storage.type", "nfs", "at '/storage/type'"),
        ("rayAuth.secretName", "", "at '/rayAuth/secretName': minLength"),
        ("mlflow.database.type", "sqlite", "at '/mlflow/database/type'"),
        ("serving.rolloutSpec.steps", [5, 250], "at '/serving/rolloutSpec/steps/1': maximum"),
        ("serving.app.numGpus", 1, "at '/serving/app': additional properties 'numGpus'"),
        ("serving.app.baselineAlias", "models:/m@champion", "at '/serving/app/baselineAlias'"),
        ("serving.app.replicas", 0, "at '/serving/app/replicas': minimum"),
        # Maps merge over values.yaml in Helm: null removes a default key.
        ("rayCluster.head.resources", {"limits": None}, "at '/rayCluster/head/resources': missing property 'limits'"),
        ("rayCluster.workerGroups.0.nmae", "typo", "at '/rayCluster/workerGroups/0': additional properties 'nmae'"),
        # KubeRay's own enums, refused at install instead of by the operator later.
        ("rayCluster.upgradeStrategy", "RollingUpdate", "at '/rayCluster/upgradeStrategy'"),
        ("serving.upgradeStrategy", {"type": "BlueGreen"}, "at '/serving/upgradeStrategy/type'"),
        ("serving.upgradeStrategy", {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {}},
         "missing properties 'stepSizePercent', 'intervalSeconds', 'gatewayClassName'"),
        ("serving.upgradeStrategy", {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {
            "stepSizePercent": 150, "intervalSeconds": 30, "gatewayClassName": "istio"}},
         "at '/serving/upgradeStrategy/clusterUpgradeOptions/stepSizePercent': maximum"),
        ("rayCluster.workerGroups.0.topologySpreadConstraints", [{"maxSkew": 1}], "missing properties"),
        ("jobs.defaults.labels", {"kueue.x-k8s.io/queue-name": "q" * 64}, "maxLength"),
        ("serving.workerGroups.0.podLabels", {"app.kubernetes.io/component": "x"},
         "invalid propertyName 'app.kubernetes.io/component'"),
    ],
)
def test_invalid_value_fails_with_the_key_in_the_message(renderer, path: str, value: Any, expected: str) -> None:
    stderr = renderer.error(renderer.values(_set(path, value)))
    assert "values don't meet the specifications of the schema" in stderr
    assert expected in stderr, stderr


def test_missing_image_block_fails(renderer) -> None:
    values = renderer.values(lambda v: v.pop("image"))
    # helm merges over values.yaml, so remove it explicitly with null.
    values["image"] = None
    stderr = renderer.error(values)
    assert "image" in stderr and "schema" in stderr, stderr


def test_gpu_count_given_as_text_on_the_command_line_fails(renderer) -> None:
    stderr = renderer.error(set_strings=["rayCluster.workerGroups[0].gpus=1"])
    assert "gpus': got string, want integer" in stderr, stderr


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("storage.type", "s3"), "at '/storage/s3/bucket': minLength"),
        (_set("mlflow.database.type", "external"), "at '/mlflow/database/external/uriSecret': minLength"),
        (_set("mlflow.auth.enabled", True), "at '/mlflow/auth/serverSecret': minLength"),
        (_set("serving.adminTokenSecret", ""), "at '/serving/adminTokenSecret': minLength"),
    ],
)
def test_a_choice_that_needs_a_secret_or_bucket_fails_without_it(renderer, mutate, expected: str) -> None:
    stderr = renderer.error(renderer.values(mutate))
    assert expected in stderr, stderr


def test_shared_job_without_the_shared_cluster_fails_clearly(renderer) -> None:
    def mutate(v: dict[str, Any]) -> None:
        v["rayCluster"]["enabled"] = False
        v["jobs"]["train"]["enabled"] = True

    stderr = renderer.error(renderer.values(mutate))
    assert "jobs.train.cluster is shared but rayCluster.enabled is false" in stderr, stderr
