"""The example Serve configs are valid for Ray Serve and for ``build_app``'s argument model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.serve_config import parse_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "serve").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_serve_config_validates(path):
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for application in config.applications:
        assert application.import_path == "deployments.app:build_app"
        parse_config(application.args)


def test_a_bad_argument_is_one_line_naming_it():
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match="'baseline'"):
        parse_config({"model_name": "m", "baseline": "iris@champion"})
    with pytest.raises(ConfigError, match="shadow"):
        parse_config({"model_name": "m", "baseline": "models:/m@champion", "shadow": "candidate"})
    with pytest.raises(ConfigError, match="'model_calls'"):
        parse_config({"model_name": "m", "baseline": "models:/m@champion", "model_calls": "http"})


def test_router_model_calls_go_by_value_over_grpc_unless_actor_is_chosen():
    base = {"model_name": "m", "baseline": "models:/m@champion"}
    assert parse_config(base).model_call_options == {"_by_reference": False}
    assert parse_config({**base, "model_calls": "actor"}).model_call_options == {}
