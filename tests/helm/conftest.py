"""Fixtures for the Helm chart tests: a real `helm` binary renders the chart.

Nothing is mocked. Helm renders for real (`helm template`, `helm lint`); only the
Kubernetes API server is absent, so objects are checked against the published
Kubernetes and KubeRay v1.7.0 schemas instead of being applied. The tools come from
`tools/install-chart-tools.sh` (`make tools`) into `.tools/`.
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "rayline"
TOOLS_BIN = ROOT / ".tools" / "bin"
HELM = TOOLS_BIN / "helm"
CHECKOV = TOOLS_BIN / "checkov"
HADOLINT = TOOLS_BIN / "hadolint"
CRD_DIR = ROOT / "third_party" / "kuberay-crds"  # vendored KubeRay v1.7.0 CRDs (see its README)

RELEASE = "rl"
NAMESPACE = "rayline"
EXAMPLES = {
    "default": None,
    "laptop": CHART / "examples" / "laptop.yaml",
    "single-gpu": CHART / "examples" / "single-gpu.yaml",
    "production": CHART / "examples" / "production.yaml",
    "gcs-ft": CHART / "examples" / "gcs-ft.yaml",
    "incremental-upgrade": CHART / "examples" / "incremental-upgrade.yaml",
    "dedicated-jobs": CHART / "examples" / "dedicated-jobs.yaml",
    "irsa-s3": CHART / "examples" / "irsa-s3.yaml",
    "llm-gpu": CHART / "examples" / "llm-gpu.yaml",
}

Manifest = list[dict[str, Any]]


def require_tool(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path.name} not installed: run make tools")
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = require_tool(HELM)
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, check=False)


def template_args(values_files: list[Path], sets: list[str], set_strings: list[str]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    for s in set_strings:
        args += ["--set-string", s]
    return args


def parse_manifest(text: str) -> Manifest:
    return [d for d in yaml.safe_load_all(text) if d]


class Renderer:
    """Renders the chart with given values; `values` are merged over values.yaml via a file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0
        self.defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def _write(self, values: dict[str, Any]) -> Path:
        self.count += 1
        path = self.tmp / f"values-{self.count}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def values(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """A full copy of values.yaml changed by `mutate` (lists replace, as in Helm)."""
        values = copy.deepcopy(self.defaults)
        mutate(values)
        return values

    def render(self, values: dict[str, Any] | None = None, *extra: str) -> Manifest:
        files = [self._write(values)] if values is not None else []
        result = run_helm(*template_args(files, [], []), *extra)
        if result.returncode != 0:
            pytest.fail(f"helm template failed:\n{result.stderr}")
        return parse_manifest(result.stdout)

    def error(self, values: dict[str, Any] | None = None, set_strings: list[str] | None = None) -> str:
        files = [self._write(values)] if values is not None else []
        result = run_helm(*template_args(files, [], set_strings or []))
        assert result.returncode != 0, "helm template was expected to fail but rendered"
        return result.stderr


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    require_tool(HELM)
    return Renderer(tmp_path_factory.mktemp("values"))


@pytest.fixture(scope="session")
def rendered() -> dict[str, Manifest]:
    """Each example values file (and the defaults) rendered once per session."""
    out: dict[str, Manifest] = {}
    for name, path in EXAMPLES.items():
        result = run_helm(*template_args([path] if path else [], [], []))
        if result.returncode != 0:
            pytest.fail(f"helm template failed for {name}:\n{result.stderr}")
        out[name] = parse_manifest(result.stdout)
    return out


@pytest.fixture(scope="session")
def rendered_dir(rendered: dict[str, Manifest], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The rendered manifests on disk, one file per values file (for checkov)."""
    root = tmp_path_factory.mktemp("rendered")
    for name, docs in rendered.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    yield root


def by_kind(docs: Manifest, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Manifest, kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template an object defines, CRDs included."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.append((where, node))
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(doc.get("spec", {}), f"{doc['kind']}/{doc['metadata']['name']}")
    return found


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
