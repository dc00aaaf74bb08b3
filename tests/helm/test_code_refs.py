"""Names the chart gives to Python code exist in the repository.

The RayService's serveConfigV2 import paths must name a function in deployments/, and every
RayJob entrypoint a module in jobs/. The source is parsed with `ast`, not imported (imports
pull in Ray). Nothing is mocked.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import EXAMPLES, ROOT, Manifest, one


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_serve_config_parses_and_import_paths_exist_in_deployments(rendered: dict[str, Manifest], example: str) -> None:
    config = yaml.safe_load(one(rendered[example], "RayService")["spec"]["serveConfigV2"])
    assert config["applications"], "serveConfigV2 has no applications"
    for app in config["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert module.startswith("deployments.") and attr, app["import_path"]
        path = module_file(module)
        assert path is not None, f"{app['import_path']}: {module.replace('.', '/')}.py does not exist"
        assert attr in top_level_functions(path), f"{path} does not define {attr}()"


def _all_jobs_enabled(values: dict[str, Any]) -> None:
    for name, job in values["jobs"].items():
        if name not in ("defaults", "runId"):
            job["enabled"] = True


def test_every_rayjob_entrypoint_names_a_module_in_jobs(renderer) -> None:
    jobs = [d for d in renderer.render(renderer.values(_all_jobs_enabled)) if d["kind"] == "RayJob"]
    assert len(jobs) == 5
    missing = []
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"], job["spec"]["entrypoint"]
        module = argv[2]
        assert module.startswith("jobs."), module
        path = module_file(module)
        if path is None:
            missing.append(f"{job['metadata']['name']}: {module} (no jobs/{module[5:]}.py)")
        else:
            ast.parse(path.read_text(), filename=str(path))
    assert not missing, "RayJob entrypoints name modules that do not exist:\n" + "\n".join(missing)
