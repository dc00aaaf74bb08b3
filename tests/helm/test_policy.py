"""Policy scan of the rendered manifests (checkov) and lint of the Dockerfile (hadolint).

Real tools, run once per session on the real rendered chart; nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import CHART, CHECKOV, HADOLINT, ROOT, require_tool

CHECKOV_CONFIG = ROOT / "helm" / "checkov.yaml"


@pytest.fixture(scope="session")
def checkov_report(rendered_dir: Path) -> list[dict]:
    checkov = require_tool(CHECKOV)
    result = subprocess.run(
        [str(checkov), "-d", str(rendered_dir), "--config-file", str(CHECKOV_CONFIG), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def waived_checks() -> list[str]:
    return yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]


def test_checkov_scans_every_workload_and_fails_no_check(checkov_report: list[dict]) -> None:
    [kube] = [r for r in checkov_report if r["check_type"] == "kubernetes"]
    failed = kube["results"]["failed_checks"]
    assert not failed, "\n".join(f"{c['check_id']} {c['check_name']} on {c['resource']}" for c in failed)
    passed = kube["results"]["passed_checks"]
    resources = {c["resource"].split(".")[0] for c in passed}
    assert {"Deployment", "StatefulSet", "Role", "RoleBinding", "ServiceAccount"} <= resources
    assert kube["summary"]["passed"] >= 300


def test_every_waived_check_is_documented_with_a_reason_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(CKV2?_K8S_\d+)` \| [^|]+ \| ([^|]{20,}) \|$", readme, flags=re.M))
    assert set(rows) == set(waived_checks()), f"README waivers {sorted(rows)} != checkov.yaml {waived_checks()}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool(HADOLINT)
    result = subprocess.run(
        [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_torch_and_ray_and_runs_as_the_charts_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "torch==2.13.0" in dockerfile
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", dockerfile, flags=re.M)
    # torch's wheels carry CUDA and cuDNN: the base needs no CUDA libraries of its own.
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu", dockerfile, flags=re.M)
    assert f"USER {values['podSecurityContext']['runAsUser']}:" in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[serve,train]=={values["rayVersion"]}"' in pyproject, "chart rayVersion differs from the pinned Ray"


def test_image_builds_deepspeeds_cpu_adam_op_where_a_compiler_is() -> None:
    """ZeRO offload needs cpu_adam; the runtime stage has no compiler, so it must come prebuilt."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    build, runtime = re.split(r"^FROM \$\{CUDA_IMAGE\}.*$", dockerfile, flags=re.M)[1:]
    pin = re.search(r'"deepspeed==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"DS_BUILD_CPU_ADAM=1 DS_ACCELERATOR=cuda pip install deepspeed=={pin}" in build
    assert "build-essential" in build and "build-essential" not in runtime
    assert 'python -c "import deepspeed.ops.adam.cpu_adam_op"' in runtime


def test_production_values_run_the_image_by_digest() -> None:
    values = yaml.safe_load((CHART / "examples" / "production.yaml").read_text())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", values["image"]["digest"])

