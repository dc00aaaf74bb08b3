"""``rayline serve status`` and ``rayline canary start`` against real running apps (over HTTP, as a user runs them)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli.main import app as cli
from cluster.serving import APP_NAME, LLM_APP_NAME
from deployments.contracts import HEADER_VARIANT, HEADER_VERSION
from tests.serve.helpers import ADMIN_TOKEN, TERMINAL, register_test_model
from tests.serve.llm_helpers import build_tiny_lm
from tests.serve.test_llm_router import register_two


def test_serve_status_shows_readiness_and_traffic(static_app, monkeypatch):
    monkeypatch.setenv("RAYLINE_ADMIN_TOKEN", ADMIN_TOKEN)
    result = CliRunner().invoke(cli, ["serve", "status", "--url", static_app.url])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "'baseline': 1.0" in result.output


def test_serve_status_without_the_token_says_so(static_app, monkeypatch):
    monkeypatch.delenv("RAYLINE_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "status", "--url", static_app.url])
    assert result.exit_code == 0, result.output
    assert "admin token missing or wrong" in result.output


def rayline(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entrypoint (``rayline ARGS``) in-process: exit code, stdout, stderr."""
    from cluster.cli.main import main

    monkeypatch.setattr(sys, "argv", ["rayline", *args])
    capsys.readouterr()   # only this command's output
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def one_error_line(stderr: str) -> str:
    """The CLI's error: exactly one ``rayline: error:`` line (Ray may stream replica logs beside it)."""
    (line,) = [x for x in stderr.splitlines() if x.startswith("rayline: error:")]
    return line


@pytest.fixture
def stack_env(monkeypatch, serve_url, settings, tmp_path):
    """The CLI's settings point at the session's Serve, MLflow and a private state dir, as `rayline env` would."""
    monkeypatch.setenv("RAYLINE_SERVE_HTTP_PORT", serve_url.rsplit(":", 1)[1])
    monkeypatch.setenv("RAYLINE_MLFLOW_TRACKING_URI", str(settings.mlflow_tracking_uri))
    monkeypatch.setenv("RAYLINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("RAYLINE_STATE_DIR", str(tmp_path))
    return tmp_path


def write_spec(folder: Path, model: str, candidate: str) -> Path:
    path = folder / f"canary-{candidate}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "baseline": "champion", "candidate": candidate,
                                    "steps": [50, 100], "interval_s": 1, "min_requests": 100_000}))
    return path


def deployed_cpus(deployment: str) -> float:
    """CPUs a replica of ``deployment`` (in the rayline app) is given, as the Serve controller runs it
    (the details behind the Ray dashboard's Serve page)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    config = details["applications"][APP_NAME]["deployments"][deployment]["deployment_config"]
    return float(config["ray_actor_options"]["num_cpus"])


def test_canary_start_deploys_baseline_and_candidate_then_starts_and_leaves_a_running_rollout_alone(
        stack_env, settings, serve_url, monkeypatch, capsys):
    """The redeploy keeps how the app was deployed (here 0.2 CPU a replica), changing only the versions."""
    from ray import serve

    model = register_test_model(settings)
    code, _, err = rayline(monkeypatch, capsys, "serve", "deploy", model, "--num-cpus", "0.2")
    assert code == 0, err
    code, _, err = rayline(monkeypatch, capsys, "canary", "start", str(write_spec(stack_env, model, "9")))
    assert code != 0 and "9" in one_error_line(err), err
    spec = str(write_spec(stack_env, model, "challenger"))
    try:
        code, out, err = rayline(monkeypatch, capsys, "canary", "start", spec)
        assert code == 0, err
        assert "deployed" in out
        described = httpx.get(f"{serve_url}/v1/models/{model}", timeout=10).json()
        assert described["versions"] == {"baseline": "1", "candidate": "2"}
        assert deployed_cpus("model-candidate") == deployed_cpus("model-baseline") == 0.2
        assert (stack_env / "rollouts" / model / "current").exists()
        code, _, err = rayline(monkeypatch, capsys, "canary", "start", spec)
        assert code != 0 and "abort" in one_error_line(err), err
        assert rayline(monkeypatch, capsys, "canary", "abort", "-r", "test over")[0] == 0
    finally:
        serve.delete(APP_NAME)


def test_models_list_shows_aliases_and_models_show_name_lists_the_versions(settings, monkeypatch, capsys):
    """MLflow's version search leaves aliases out; the CLI must still show them, and a bare NAME is a listing."""
    monkeypatch.setenv("RAYLINE_MLFLOW_TRACKING_URI", str(settings.mlflow_tracking_uri))
    model = register_test_model(settings)
    code, out, err = rayline(monkeypatch, capsys, "models", "list")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if model in line]
    assert "champion→v1" in row and "challenger→v2" in row, out
    code, out, err = rayline(monkeypatch, capsys, "models", "show", model)
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "champion" in rows["1"] and "challenger" in rows["2"], out
    code, out, err = rayline(monkeypatch, capsys, "models", "show", f"{model}@challenger")
    assert code == 0 and "version 2" in out, err


def test_canary_start_refuses_a_worse_challenger_with_both_figures_before_deploying_anything(
        stack_env, settings, serve_url, monkeypatch, capsys):
    from cluster.registry import Registry
    from tests.serve.helpers import quality_tags, register_version, tiny_model

    model = f"cli-gate-{stack_env.name[-6:]}".replace("_", "-")
    for seed, accuracy in enumerate((0.9, 0.8)):
        register_version(settings, model, tiny_model(seed), tags=quality_tags(accuracy))
    Registry(settings).set_alias(model, "champion", "1")
    Registry(settings).set_alias(model, "challenger", "2")
    code, _, err = rayline(monkeypatch, capsys, "canary", "start", str(write_spec(stack_env, model, "challenger")))
    line = one_error_line(err)
    assert code != 0 and "candidate v2 val_accuracy 0.8 vs baseline v1 0.9 on serve-test version v1" in line, err
    assert "--allow-worse-quality" in line
    assert httpx.get(f"{serve_url}/v1/models/{model}", timeout=10).status_code == 404, "nothing was deployed"


def test_serve_deploy_kind_llm_serves_a_language_model_under_llm_and_canary_start_rolls_it_out(
        stack_env, settings, serve_url, tmp_path, monkeypatch, capsys):
    """``rayline serve deploy MODEL --kind llm --candidate ...`` runs the language model's router app as its
    own Serve app under ``/llm`` (a tabular app at ``/`` would keep serving): the official ``openai`` client
    streams a completion from the base URL it prints, the response names variant and version, ``serve
    status --url`` reads that app, and ``canary start SPEC --url`` starts a rollout on it (aborted here).
    An unknown kind exits 2 naming the option, before anything is deployed."""
    import openai
    from ray import serve

    model = register_two(settings, build_tiny_lm(tmp_path / "lm"))
    code, _, err = rayline(monkeypatch, capsys, "serve", "deploy", model, "--kind", "gpt")
    assert code == 2 and "--kind" in err, err
    code, out, err = rayline(monkeypatch, capsys, "serve", "deploy", model, "--kind", "llm", "--num-cpus", "0.2",
                             "--candidate", f"models:/{model}@challenger")
    try:
        assert code == 0, err
        base = f"{serve_url}/{LLM_APP_NAME}"
        assert f"{base}/v1" in out, out
        with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30) as client:
            raw = client.completions.with_raw_response.create(model=model, prompt="the cat", max_tokens=8,
                                                              stream=True)
            text = "".join(choice.text for event in raw.parse() for choice in event.choices)
        assert text
        assert (raw.headers[HEADER_VARIANT], raw.headers[HEADER_VERSION]) == ("baseline", "1")
        code, out, err = rayline(monkeypatch, capsys, "serve", "status", "--url", base)
        assert code == 0 and "ready" in out, out + err
        code, out, err = rayline(monkeypatch, capsys, "canary", "start", str(write_spec(tmp_path, model, "challenger")),
                                 "--url", base)
        assert code == 0, err
        assert httpx.get(f"{base}/admin/rollout", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                         timeout=10).json()["rollout"]["phase"] not in TERMINAL
        assert rayline(monkeypatch, capsys, "canary", "abort", "--url", base, "-r", "test over")[0] == 0
    finally:
        serve.delete(LLM_APP_NAME)
