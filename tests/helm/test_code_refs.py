"""What the chart hands to the Python code is what the code accepts.

The RayService's serveConfigV2 args are validated by the real `deployments.serve_config.parse_config`
(pydantic, `extra="forbid"`); the example rollout spec by the real `deployments.rollout.spec.parse_spec`;
every RayJob entrypoint's arguments by the job module's own argparse calls, rebuilt from its source
with `ast` (the modules build their parsers inside `main()`, which would run the job); training
configs by the real `train.config.load_config`. Nothing is mocked; only Kubernetes is absent.
"""

from __future__ import annotations

import argparse
import ast
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.errors import ConfigError
from deployments.rollout.spec import parse_spec, ref_uri
from deployments.serve_config import parse_config
from tests.helm.conftest import EXAMPLES, ROOT, Manifest, env_of, one, parse_manifest, run_helm, template_args

APP_IMAGE_ROOT = Path("/app")  # the Dockerfile's WORKDIR, where it copies the repository's code and examples
JOB_KEYS = ("ingest", "train", "trainDeepspeed", "evaluate", "hello")


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def serve_apps(docs: Manifest) -> list[dict[str, Any]]:
    config = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    assert config["applications"], "serveConfigV2 has no applications"
    return config["applications"]


def serving_containers(docs: Manifest) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of the serving cluster's head and every worker group."""
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    return [(pod, pod["containers"][0]) for pod in pods]


# --- serving: serveConfigV2 -> deployments.app:build_app ---------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_serve_apps_import_build_app_with_args_that_serve_config_accepts(rendered: dict[str, Manifest],
                                                                         example: str) -> None:
    for app in serve_apps(rendered[example]):
        module, _, attr = app["import_path"].partition(":")
        path = module_file(module)
        assert path is not None, f"{app['import_path']}: {module.replace('.', '/')}.py does not exist"
        assert attr in top_level_functions(path), f"{path} does not define {attr}()"
        cfg = parse_config(app["args"])  # raises ConfigError naming the first bad field
        assert cfg.baseline == f"models:/{cfg.model_name}@champion"


def test_serve_config_validation_rejects_args_the_old_chart_rendered() -> None:
    """The check has teeth: the chart's former args (variants list, rollout block) fail."""

    with pytest.raises(ConfigError, match="variants"):
        parse_config({"model_name": "m", "baseline": "models:/m@champion",
                      "variants": [{"name": "champion", "model_uri": "models:/m@champion"}]})


def test_placement_and_resolve_options_reach_the_serve_app(renderer) -> None:
    """Spreading replicas over nodes, pinning the controller and the alias re-resolve interval are chart values."""
    def spread(values: dict[str, Any]) -> None:
        values["serving"]["app"].update(maxReplicasPerNode=1, controllerResources={"rayline_serving": 0.01},
                                        resolveIntervalSeconds=5)

    [app] = serve_apps(renderer.render(renderer.values(spread)))
    cfg = parse_config(app["args"])
    assert (cfg.max_replicas_per_node, cfg.controller_resources, cfg.resolve_interval_s) == (
        1, {"rayline_serving": 0.01}, 5.0)
    [default] = serve_apps(renderer.render())
    assert "max_replicas_per_node" not in default["args"] and "controller_resources" not in default["args"]


def test_a_language_model_is_a_second_serve_app_whose_args_the_llm_server_accepts(renderer) -> None:
    """``serving.llm`` adds the OpenAI-API application beside the tabular one, its args through the real
    ``LLMServeConfig`` and its module's ``build_app``; enabled without a model, the chart refuses to render."""
    from deployments.llm.server import LLMServeConfig

    def llm(values: dict[str, Any]) -> None:
        values["serving"]["llm"].update(enabled=True, model="models:/pystdlib-gpt@champion", maxActive=8,
                                        dtype="bfloat16")

    tabular, language = serve_apps(renderer.render(renderer.values(llm)))
    assert tabular["route_prefix"] == "/" and language["route_prefix"] == "/llm"
    module, _, attr = language["import_path"].partition(":")
    assert attr in top_level_functions(module_file(module))
    cfg = LLMServeConfig(**language["args"])
    assert (cfg.model, cfg.max_active, cfg.tracking_uri, cfg.dtype) == ("models:/pystdlib-gpt@champion", 8,
                                                                       tabular["args"]["tracking_uri"], "bfloat16")
    assert len(serve_apps(renderer.render())) == 1  # off by default
    assert "dtype" in renderer.error(renderer.values(lambda v: v["serving"]["llm"].update(dtype="int8")))
    refused = renderer.error(renderer.values(lambda v: v["serving"]["llm"].update(enabled=True)))
    assert "llm" in refused and "model" in refused


def test_the_router_app_serves_a_language_model_with_kind_llm(renderer) -> None:
    """``serving.app.kind: llm``: the router app (canaries, A/B, shadow) for a language model, through the
    real ``parse_config``; the default stays tabular."""
    def llm(values: dict[str, Any]) -> None:
        values["serving"]["app"].update(kind="llm", modelName="pystdlib-gpt", llm={"maxActive": 4, "maxWaiting": 8,
                                                                                   "torchThreads": 2,
                                                                                   "dtype": "bfloat16"})

    [app] = serve_apps(renderer.render(renderer.values(llm)))
    cfg = parse_config(app["args"])
    assert (cfg.kind, cfg.llm.max_active, cfg.llm.max_waiting, cfg.llm.torch_threads, cfg.llm.dtype) == (
        "llm", 4, 8, 2, "bfloat16")
    assert cfg.candidate == "models:/pystdlib-gpt@challenger" and not cfg.llm.first_token_delay_s
    [default] = serve_apps(renderer.render())
    assert parse_config(default["args"]).kind == "tabular"
    assert "kind" in renderer.error(renderer.values(lambda v: v["serving"]["app"].update(kind="vision")))


GPU_GROUP = {"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "gpus": 1,
             "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
             "rayStartParams": {}, "shmSize": "2Gi", "nodeSelector": {}, "affinity": {},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def gpu_llm(router_gpus: float = 1, second_app_gpus: float = 0.5, group: dict[str, Any] | None = GPU_GROUP):
    """Values: the router app serving a GPT with ``router_gpus`` per replica, the second LM app with
    ``second_app_gpus``, and ``group`` as the only serving worker group (None: the default CPU group)."""
    def mutate(values: dict[str, Any]) -> None:
        serving = values["serving"]
        serving["app"].update(kind="llm", modelName="pystdlib-gpt")
        serving["app"]["llm"]["numGpus"] = router_gpus
        serving["llm"].update(enabled=True, model="models:/pystdlib-gpt@champion", numGpus=second_app_gpus)
        if group is not None:
            serving["workerGroups"] = [group]
    return mutate


def test_a_language_model_on_gpus_renders_num_gpus_and_a_gpu_serving_group(renderer) -> None:
    """``serving.app.llm.numGpus`` / ``serving.llm.numGpus`` become the replicas' ``num_gpus``; the serving group
    that hosts them requests and limits ``nvidia.com/gpu`` and tolerates the GPU taint. By default none of it."""
    docs = renderer.render(renderer.values(gpu_llm()))
    router, second = serve_apps(docs)
    assert router["args"]["llm"]["num_gpus"] == 1 and second["args"]["num_gpus"] == 0.5
    [group] = one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    default = renderer.render()
    [app] = serve_apps(default)
    assert "num_gpus" not in yaml.safe_dump(app["args"])
    cpu_only = renderer.render(renderer.values(gpu_llm(router_gpus=0, second_app_gpus=0, group=None)))
    assert all("num_gpus" not in yaml.safe_dump(a["args"]) for a in serve_apps(cpu_only))
    for _pod, container in serving_containers(cpu_only):
        assert "nvidia.com/gpu" not in yaml.safe_dump(container["resources"])


def test_the_gpu_args_are_what_the_real_parsers_accept(renderer) -> None:
    from deployments.llm.server import LLMServeConfig

    router, second = serve_apps(renderer.render(renderer.values(gpu_llm())))
    assert parse_config(router["args"]).llm.num_gpus == 1
    assert LLMServeConfig(**second["args"]).num_gpus == 0.5


def test_gpus_no_serving_group_can_hold_or_on_a_tabular_app_are_refused_at_render(renderer) -> None:
    """Fail closed at ``helm install``: a replica asking more GPUs than any serving pod has would wait forever."""
    refused = renderer.error(renderer.values(gpu_llm(group=None)))
    assert "serving.app.llm.numGpus is 1" in refused and "no serving worker group" in refused
    refused = renderer.error(renderer.values(gpu_llm(router_gpus=0, second_app_gpus=2)))
    assert "serving.llm.numGpus is 2" in refused and "most: 1" in refused
    tabular = renderer.error(renderer.values(lambda v: v["serving"]["app"]["llm"].update(numGpus=1)))
    assert "set serving.app.kind to llm" in tabular
    negative = renderer.error(renderer.values(gpu_llm(router_gpus=-1)))
    assert "numGpus" in negative


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_serve_app_state_dir_is_on_a_claim_mounted_in_every_serving_pod(rendered: dict[str, Manifest],
                                                                        example: str) -> None:
    [app] = serve_apps(rendered[example])
    state_dir = Path(app["args"]["state_dir"])
    for pod, container in serving_containers(rendered[example]):
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert any(state_dir.is_relative_to(m["mountPath"]) for m in mounts), (
            f"state_dir {state_dir} is not on a persistent claim in {container['name']}: {mounts}"
        )


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_serve_app_reaches_the_in_cluster_mlflow_and_gets_secrets_only_by_env_name(rendered: dict[str, Manifest],
                                                                                  example: str) -> None:
    docs = rendered[example]
    [app] = serve_apps(docs)
    args = app["args"]
    mlflow_service = one(docs, "Service", "-mlflow")["metadata"]["name"]
    assert args["tracking_uri"] == f"http://{mlflow_service}.rayline.svc:5000"
    predict_secret = (yaml.safe_load(EXAMPLES[example].read_text()) if EXAMPLES[example] else {}).get(
        "serving", {}).get("predictTokenSecret")
    for _pod, container in serving_containers(docs):
        env = env_of(container)
        assert env["RAYLINE_MLFLOW_TRACKING_URI"]["value"] == args["tracking_uri"]
        assert env[args["admin_token_env"]]["valueFrom"]["secretKeyRef"] == {"name": "rayline-admin-token",
                                                                             "key": "token"}
        if predict_secret:
            assert env[args["predict_token_env"]]["valueFrom"]["secretKeyRef"] == {"name": predict_secret,
                                                                                   "key": "token"}
        else:
            assert args["predict_token_env"] not in env
    assert not [k for k in args if "token" in k and not k.endswith("_env")], "a token value in the serve config"


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_example_rollout_spec_is_valid_and_targets_the_served_versions(rendered: dict[str, Manifest],
                                                                      example: str) -> None:
    [app] = serve_apps(rendered[example])
    spec = parse_spec(yaml.safe_load(one(rendered[example], "ConfigMap", "-rollout-spec")["data"]["canary.yaml"]))
    assert spec.model == app["args"]["model_name"]
    assert ref_uri(spec.model, spec.baseline) == app["args"]["baseline"]
    assert ref_uri(spec.model, spec.candidate) == app["args"]["candidate"]


# --- RayJobs: entrypoint -> jobs/<name>.py argparse --------------------------------------------


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in {"int", "float", "str"}:
        return {"int": int, "float": float, "str": str}[node.id]
    return ast.literal_eval(node)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise AssertionError(f"jobs/{self.prog}.py: {message}")


@cache
def job_parser(path: Path) -> argparse.ArgumentParser:
    """The module's argument parser, rebuilt from its literal `add_argument(...)` calls."""
    parser = _Parser(prog=path.stem, add_help=False)
    calls = 0
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            kwargs = {k.arg: _literal(k.value) for k in node.keywords if k.arg in {
                "action", "required", "type", "nargs", "choices", "default"}}
            parser.add_argument(*[_literal(a) for a in node.args], **kwargs)
            calls += 1
    assert calls or "argparse" not in path.read_text(), f"no add_argument calls found in {path}"
    return parser


def parse_job_args(path: Path, args: list[str]) -> argparse.Namespace:
    """Parse as the job would; a missing, unknown or malformed argument raises AssertionError."""
    return job_parser(path).parse_args(args)


def all_jobs_rendered(example: str) -> Manifest:
    path = EXAMPLES[example]
    sets = [f"jobs.{key}.enabled=true" for key in JOB_KEYS]
    result = run_helm(*template_args([path] if path else [], sets, []), "--show-only", "templates/rayjobs.yaml")
    assert result.returncode == 0, result.stderr
    return parse_manifest(result.stdout)


def image_path(arg: str) -> Path | None:
    """The repository file an absolute image path under /app is copied from (None for other args)."""
    path = Path(arg)
    return ROOT / path.relative_to(APP_IMAGE_ROOT) if path.is_relative_to(APP_IMAGE_ROOT) else None


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_rayjob_entrypoint_parses_with_its_job_modules_arguments(example: str) -> None:
    jobs = all_jobs_rendered(example)
    assert len(jobs) == len(JOB_KEYS)
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), job["spec"]["entrypoint"]
        path = module_file(argv[2])
        assert path is not None, f"{job['metadata']['name']}: {argv[2]} does not exist in jobs/"
        assert "main" in top_level_functions(path), f"{path} has no main()"
        parse_job_args(path, argv[3:])


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_files_the_rayjobs_name_are_in_the_image_and_training_configs_load(example: str) -> None:
    from train.config import load_config  # imports torch: only here

    dockerfile = (ROOT / "Dockerfile").read_text()
    for job in all_jobs_rendered(example):
        argv = shlex.split(job["spec"]["entrypoint"])
        for arg in argv[3:]:
            local = image_path(arg)
            if local is None:
                continue
            assert local.is_file(), f"{job['metadata']['name']}: {arg} is not in the repository"
            top = local.relative_to(ROOT).parts[0]
            assert f"COPY --chown=root:root {top} ./{top}" in dockerfile, f"the Dockerfile does not copy {top}/"
        if argv[2] == "jobs.train":
            config = image_path(parse_job_args(module_file("jobs.train"), argv[3:]).config)
            assert config is not None, f"{job['metadata']['name']}: --config must be a file in the image (/app/...)"
            load_config(config)


def test_argument_check_has_teeth() -> None:
    train = module_file("jobs.train")
    with pytest.raises(AssertionError, match="arguments are required: --config"):
        parse_job_args(train, [])
    with pytest.raises(AssertionError, match="unrecognized arguments: --epochs 10"):
        parse_job_args(train, ["--config", "x.yaml", "--epochs", "10"])
    with pytest.raises(AssertionError, match="ignored explicit argument"):
        parse_job_args(module_file("jobs.ingest"), ["--source", "a", "--contract", "c", "--dataset", "d",
                                                    "--mlflow=yes"])
