"""Will a job fit: the arithmetic on the dashboard's answers (shapes as Ray 2.60's dashboard returns them).

The live path (a Serve app holding CPUs on a real ``rayline up`` stack) is in ``test_stack.py``; here the
answers are written out so the autoscaler case, which needs a KubeRay cluster, is covered too.
"""

from __future__ import annotations

from types import SimpleNamespace

from cluster.capacity import capacity, has_autoscaler, shortfall, training_need

LOCAL_STATUS = {"data": {
    "autoscalingStatus": "Cluster status: 0 nodes\n - ResourceUsage: 0.0/2.0 CPU\nWorker node types:",
    "clusterStatus": {"autoscalerReport": {"pendingNodes": [], "pendingLaunches": {}, "legacy": True},
                      "loadMetricsReport": {"usage": {"CPU": [0.0, 2.0], "memory": [0.0, 1e10]}}}}}
AUTOSCALING_STATUS = {"data": {"autoscalingStatus": "…\nWorker node types:\n - cpu-workers: 0 of max 4",
                               "clusterStatus": LOCAL_STATUS["data"]["clusterStatus"]}}
ACTORS = [
    {"class_name": "ServeReplica:rayline:router", "state": "ALIVE", "required_resources": {"CPU": 0.25}},
    {"class_name": "ServeReplica:rayline:model-baseline", "state": "ALIVE", "required_resources": {"CPU": 1.0}},
    {"class_name": "ServeController", "state": "ALIVE", "required_resources": {}},
    {"class_name": "Old", "state": "DEAD", "required_resources": {"CPU": 1.0}},
    {"class_name": "RayTrainWorker", "state": "ALIVE", "required_resources": {"CPU": 1.0},
     "placement_group_id": "pg1"},   # inside its group's reservation: counted once, as the group
]
GROUPS = [{"placement_group_id": "pg1abcdef", "name": "", "state": "CREATED",
           "bundles": [{"unit_resources": {"CPU": 0.5}}]}]


def test_a_job_that_does_not_fit_gets_the_figures_and_who_holds_the_cpus() -> None:
    cap = capacity(LOCAL_STATUS, ACTORS, GROUPS)
    assert cap.total == {"CPU": 2.0} and cap.free("CPU") == 0.25 and not cap.autoscaler
    need = training_need(SimpleNamespace(num_workers=2, cpus_per_worker=1.0, use_gpu=False, gpus_per_worker=None))
    line = shortfall(need, cap)
    assert line is not None and line.startswith("it needs 2 CPU (2 workers × 1 CPU) but the cluster has 0.25 of 2 CPU")
    assert "Serve app 'rayline' (model-baseline) 1 CPU; placement group pg1abcde 0.5 CPU; Serve app 'rayline' " \
           "(router) 0.25 CPU" in line


def test_a_job_that_fits_passes_and_gpus_count_too() -> None:
    cap = capacity(LOCAL_STATUS, [], [])
    small = training_need(SimpleNamespace(num_workers=2, cpus_per_worker=0.5, use_gpu=False, gpus_per_worker=None))
    assert shortfall(small, cap) is None
    gpu = training_need(SimpleNamespace(num_workers=1, cpus_per_worker=1.0, use_gpu=True, gpus_per_worker=None))
    assert shortfall(gpu, cap) == "it needs 1 GPU but the cluster has 0 of 0 GPU free"


def test_only_a_cluster_that_can_grow_counts_as_autoscaling() -> None:
    assert not has_autoscaler(LOCAL_STATUS)   # the local head's monitor has no worker node types
    assert has_autoscaler(AUTOSCALING_STATUS)
    pending = {"data": {"clusterStatus": {"autoscalerReport": {"pendingNodes": [{"nodeType": "gpu"}]}}}}
    assert has_autoscaler(pending)
