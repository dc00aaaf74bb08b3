"""Settings: defaults → YAML → RAYLINE_* env → CLI flags, and invalid values fail naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("RAYLINE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_derive_local_addresses() -> None:
    s = load_settings()
    assert s.ray_address == "127.0.0.1:6379"
    assert s.ray_dashboard_url == "http://127.0.0.1:8265"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert s.state_dir == Path(".rayline")


def test_yaml_then_env_then_flags_take_precedence_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("mlflow_port: 5100\nray_dashboard_port: 8300\nlog_level: WARNING\n")
    s = load_settings(cfg)
    assert (s.mlflow_port, s.ray_dashboard_port, s.log_level) == (5100, 8300, "WARNING")
    monkeypatch.setenv("RAYLINE_MLFLOW_PORT", "5200")
    s = load_settings(cfg)
    assert (s.mlflow_port, s.ray_dashboard_port) == (5200, 8300)
    s = load_settings(cfg, mlflow_port=5300, ray_dashboard_port=None)
    assert (s.mlflow_port, s.ray_dashboard_port) == (5300, 8300)
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5300"


def test_explicit_addresses_point_the_same_code_at_a_remote_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLINE_MLFLOW_TRACKING_URI", "http://mlflow.rayline.svc:5000")
    monkeypatch.setenv("RAYLINE_RAY_DASHBOARD_URL", "http://rayline-head-svc:8265")
    s = load_settings()
    assert s.mlflow_tracking_uri == "http://mlflow.rayline.svc:5000"
    assert s.ray_dashboard_url == "http://rayline-head-svc:8265"


@pytest.mark.parametrize(
    ("env", "field"),
    [({"RAYLINE_MLFLOW_PORT": "not-a-port"}, "mlflow_port"),
     ({"RAYLINE_RAY_GCS_PORT": "70000"}, "ray_gcs_port"),
     ({"RAYLINE_LOG_LEVEL": "LOUD"}, "log_level")],
)
def test_invalid_setting_fails_fast_naming_the_field(
    env: dict[str, str], field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_settings()


def test_unknown_key_in_yaml_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("mlflow_prot: 5000\n")
    with pytest.raises(ConfigError, match="mlflow_prot"):
        load_settings(cfg)


def test_cli_reports_invalid_setting_as_one_line_and_nonzero_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLINE_MLFLOW_PORT", "abc")
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "status"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mlflow_port" in lines[0], proc.stderr
