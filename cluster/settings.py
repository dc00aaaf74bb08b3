"""One settings model for every rayline component.

Precedence, lowest to highest: defaults → YAML file → ``RAYLINE_*`` environment
variables → explicit overrides (CLI flags). Addresses that are not set are derived
from host and ports, so the same code points at a Kubernetes deployment by setting
``RAYLINE_RAY_ADDRESS`` / ``RAYLINE_MLFLOW_TRACKING_URI`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cluster import files
from cluster.errors import ConfigError
from cluster.files import join
from cluster.serve_ingress import Ingress

CONFIG_ENV = "RAYLINE_CONFIG"
DEFAULT_CONFIG_FILE = "rayline.yaml"

Port = int


class Settings(BaseSettings):
    """Where the platform's parts live and how they are reached."""

    model_config = SettingsConfigDict(env_prefix="RAYLINE_", extra="forbid", validate_default=True)

    # Local stack
    state_dir: Path = Path(".rayline")
    host: str = "127.0.0.1"
    ray_gcs_port: Port = Field(6379, ge=1, le=65535)
    ray_dashboard_port: Port = Field(8265, ge=1, le=65535)
    ray_client_port: Port = Field(10001, ge=1, le=65535)
    ray_metrics_port: Port = Field(8080, ge=1, le=65535)
    ray_agent_port: Port = Field(52365, ge=1, le=65535)
    ray_num_cpus: int | None = Field(None, ge=1)
    mlflow_port: Port = Field(5000, ge=1, le=65535)
    mlflow_workers: int = Field(1, ge=1)
    serve_http_port: Port = Field(8000, ge=1, le=65535)
    # Serve's HTTP ingress (cluster.serve_ingress): "proxy" (Serve's Python proxy) or "haproxy" (Ray's HAProxy,
    # with its stats page and Prometheus frontend on these ports)
    serve_ingress: Ingress = Ingress.PROXY
    serve_haproxy_stats_port: Port = Field(8404, ge=1, le=65535)
    serve_haproxy_metrics_port: Port = Field(9101, ge=1, le=65535)

    # Addresses (derived from the above when unset)
    ray_address: str | None = None
    ray_dashboard_url: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "rayline"

    # Ray token authentication (on by default in Ray 2.60; rayline keeps it on)
    ray_auth_token: SecretStr | None = None
    ray_auth_token_path: Path | None = None

    # Serving admin API
    admin_token: SecretStr | None = None
    serve_predict_token: SecretStr | None = None

    # Storage: local paths, file://, s3:// or another fsspec URL. ``storage_root`` alone puts the
    # datasets, checkpoints and rollout state under it (``<root>/datasets``, ``<root>/checkpoints``,
    # ``<root>/rollouts``; without it rollouts stay in ``<state_dir>/rollouts``). S3 fields
    # left unset come from the AWS chain (AWS_* variables, shared config, IRSA).
    storage_root: str | None = None
    datasets_root: str | None = None
    checkpoints_root: str | None = None
    rollouts_root: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _derive_addresses(self) -> Settings:
        if self.ray_address is None:
            self.ray_address = f"{self.host}:{self.ray_gcs_port}"
        if self.ray_dashboard_url is None:
            self.ray_dashboard_url = f"http://{self.host}:{self.ray_dashboard_port}"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        if self.ray_auth_token_path is None:
            self.ray_auth_token_path = self.state_dir / "ray_auth_token"
        if self.datasets_root is None:
            self.datasets_root = join(self.storage_root, "datasets") if self.storage_root else \
                str(self.state_dir / "datasets")
        if self.checkpoints_root is None:
            self.checkpoints_root = join(self.storage_root, "checkpoints") if self.storage_root else \
                str((self.state_dir / "checkpoints").absolute())
        if self.rollouts_root is None:
            self.rollouts_root = join(self.storage_root, "rollouts") if self.storage_root else \
                str((self.state_dir / "rollouts").absolute())
        return self

    def configure_storage(self) -> None:
        """Point the storage layer (cluster.files) at this S3 endpoint, region and keys."""
        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        files.configure(self.s3_endpoint_url, self.s3_region, self.s3_access_key_id, secret)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def ray_token(self) -> str | None:
        """The Ray auth token: explicit setting first, then the token file."""
        if self.ray_auth_token is not None:
            return self.ray_auth_token.get_secret_value()
        path = self.ray_auth_token_path
        if path is not None and path.is_file():
            return path.read_text().strip() or None
        return None

    def ray_client_env(self) -> dict[str, str]:
        """Environment a Ray client process needs to reach this cluster with token auth."""
        env = {"RAY_ADDRESS": str(self.ray_dashboard_url)}
        token = self.ray_token()
        if token:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = token
        return env


def job_env(settings: Settings) -> dict[str, str]:
    """RAYLINE_* variables a submitted job needs to see the same stack, with local paths made absolute.

    A Ray job runs in an unpacked copy of its working dir, so relative state paths would
    point somewhere else there.
    """
    def absolute(path: str | Path) -> str:
        text = str(path)
        return text if "://" in text else str(Path(text).absolute())

    return {
        "RAYLINE_STATE_DIR": absolute(settings.state_dir),
        "RAYLINE_DATASETS_ROOT": absolute(str(settings.datasets_root)),
        "RAYLINE_CHECKPOINTS_ROOT": absolute(str(settings.checkpoints_root)),
        "RAYLINE_MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "RAYLINE_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
        "RAYLINE_LOG_FORMAT": settings.log_format,
        "RAYLINE_LOG_LEVEL": settings.log_level,
        **{f"RAYLINE_{name.upper()}": value for name, value in _s3_fields(settings).items()},
    }


def _s3_fields(settings: Settings) -> dict[str, str]:
    """The S3 settings that are set, as strings (a job must reach the same bucket)."""
    secret = settings.s3_secret_access_key
    values = {"s3_endpoint_url": settings.s3_endpoint_url, "s3_region": settings.s3_region,
              "s3_access_key_id": settings.s3_access_key_id,
              "s3_secret_access_key": secret.get_secret_value() if secret else None}
    return {k: v for k, v in values.items() if v}


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} (from {CONFIG_ENV}) does not exist")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings, failing fast with the offending field's name.

    ``overrides`` are CLI flags; ``None`` values mean "flag not given" and are dropped.
    """
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(config_file)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting '{field}': {first['msg']} (got {first.get('input')!r})") from None
    settings.configure_storage()
    return settings
