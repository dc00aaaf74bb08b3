"""The chart's alert rules load in Prometheus and fire when they should (promtool, for real).

`promtool` comes with the Prometheus Debian package that `make tools` installs
(tools/install-prometheus.sh). `promtool test rules` runs the real rule engine over synthetic
series, so each new alert is shown firing on the situation it is for and silent otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import EXAMPLES, NAMESPACE, RELEASE, Manifest, one

MONITORED = [name for name in EXAMPLES if name != "laptop"]  # laptop turns monitoring off


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: run make tools (tools/install-prometheus.sh)")
    return path


def _rule_file(docs: Manifest, folder: Path, annotations: bool = True) -> Path:
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    if not annotations:  # promtool compares annotations exactly; the firing tests compare labels
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                  for g in groups]
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


@pytest.mark.parametrize("example", MONITORED)
def test_every_alert_rule_loads_in_prometheus(rendered, example: str, tmp_path: Path) -> None:
    result = subprocess.run([promtool(), "check", "rules", str(_rule_file(rendered[example], tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _alerts(name: str, at: str, firing: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in firing]}


def test_rayjob_failed_and_gpu_pending_alerts_fire_only_when_they_should(rendered, tmp_path: Path) -> None:
    rules = _rule_file(rendered["production"], tmp_path, annotations=False)
    job = f"{RELEASE}-rayline-train"
    gpu_pod, cpu_pod = f"{RELEASE}-rayline-ray-a100-worker-x1", f"{RELEASE}-rayline-ray-cpu-x2"
    ns = f'namespace="{NAMESPACE}"'
    series = [
        # The train RayJob fails after 2 minutes; another release's job fails too (not ours).
        {"series": f'kuberay_job_deployment_status{{{ns}, name="{job}", deployment_status="Running"}}',
         "values": "1 1 _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _"},
        {"series": f'kuberay_job_deployment_status{{{ns}, name="{job}", deployment_status="Failed"}}',
         "values": "_ _ 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"},
        {"series": f'kuberay_job_deployment_status{{{ns}, name="other-train", deployment_status="Failed"}}',
         "values": "1x20"},
        # A GPU worker and a CPU pod, both Pending for the whole 20 minutes.
        {"series": f'kube_pod_status_phase{{{ns}, pod="{gpu_pod}", phase="Pending"}}', "values": "1x20"},
        {"series": f'kube_pod_container_resource_requests{{{ns}, pod="{gpu_pod}", resource="nvidia_com_gpu"}}',
         "values": "8x20"},
        {"series": f'kube_pod_status_phase{{{ns}, pod="{cpu_pod}", phase="Pending"}}', "values": "1x20"},
        {"series": f'kube_pod_container_resource_requests{{{ns}, pod="{cpu_pod}", resource="cpu"}}', "values": "4x20"},
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                _alerts("RaylineRayJobFailed", "1m", []),
                _alerts("RaylineRayJobFailed", "3m", [{"namespace": NAMESPACE, "name": job, "severity": "warning"}]),
                _alerts("RaylineGpuWorkersPending", "10m", []),  # not yet: `for: 15m`
                _alerts("RaylineGpuWorkersPending", "17m",
                        [{"namespace": NAMESPACE, "pod": gpu_pod, "severity": "warning"}]),
            ],
        }],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool(), "test", "rules", str(test_file)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
