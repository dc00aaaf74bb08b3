"""The one MLflow client wrapper: tracking URI from settings, typed errors, alias helpers.

Every caller (training jobs, the evaluation job, the rollout controller, the CLI) goes
through :class:`Registry`, so connection handling and error messages are the same
everywhere. MLflow being unreachable is a :class:`RegistryError`, which the rollout
controller treats as "pause", never as "promote".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from cluster.errors import RegistryError
from cluster.settings import Settings

# Fail fast instead of MLflow's default of many minutes of retries when the server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str
    status: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """Thin, typed facade over ``mlflow.MlflowClient`` for the tracking server in settings."""

    def __init__(self, settings: Settings) -> None:
        import mlflow

        self.tracking_uri = str(settings.mlflow_tracking_uri)
        self.experiment = settings.mlflow_experiment
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @property
    def client(self):
        return self._client

    def healthy(self, timeout: float = 2.0) -> bool:
        """True when the server's ``/health`` answers 200 (HTTP servers only)."""
        if not self.tracking_uri.startswith("http"):
            return True
        try:
            return httpx.get(f"{self.tracking_uri}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def require_healthy(self) -> None:
        if not self.healthy():
            raise RegistryError(f"MLflow at {self.tracking_uri} is not reachable (is `rayline up` running?)")

    def ensure_experiment(self, name: str | None = None) -> str:
        """The id of the named experiment, creating it when missing."""
        name = name or self.experiment
        exp = self._call(self._client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        return self._call(self._client.create_experiment, name)

    def runs(self, filter_string: str, max_results: int = 20) -> list[Any]:
        """Runs of this experiment matching an MLflow search filter, newest first ([] when it does not exist yet)."""
        exp = self._call(self._client.get_experiment_by_name, self.experiment)
        if exp is None:
            return []
        return self._call(lambda: self._client.search_runs([exp.experiment_id], filter_string, max_results=max_results,
                                                           order_by=["attributes.start_time DESC"]))

    def version(self, name: str, version: str | int) -> ModelVersionInfo:
        return _info(self._call(self._client.get_model_version, name, str(version)))

    def by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        return _info(self._call(self._client.get_model_version_by_alias, name, alias))

    def resolve(self, ref: str) -> ModelVersionInfo:
        """Resolve ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``NAME/VERSION`` or ``NAME@ALIAS``."""
        body = ref.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            return self.by_alias(name, alias)
        if "/" in body:
            name, version = body.rsplit("/", 1)
            return self.version(name, version)
        raise RegistryError(f"model reference {ref!r} must be models:/NAME/VERSION or models:/NAME@ALIAS")

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name`` with its aliases (MLflow's version search leaves aliases out:
        they come from the registered model's alias map)."""
        found = self._call(self._client.search_model_versions, f"name='{name}'")
        aliases: dict[str, list[str]] = {}
        for alias, version in self.aliases(name).items():
            aliases.setdefault(version, []).append(alias)
        infos = (replace(_info(v), aliases=tuple(sorted(aliases.get(str(v.version), ())))) for v in found)
        return sorted(infos, key=lambda v: int(v.version))

    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` of a registered model."""
        model = self._call(self._client.get_registered_model, name)
        return {str(alias): str(version) for alias, version in (getattr(model, "aliases", None) or {}).items()}

    def models(self) -> list[str]:
        return sorted(m.name for m in self._call(self._client.search_registered_models))

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call(self._client.set_registered_model_alias, name, alias, str(version))

    def set_alias_fenced(self, name: str, alias: str, version: str | int, still_wanted: Callable[[], bool],
                         timeout_s: float) -> bool:
        """Move ``alias`` only if ``still_wanted()`` right before the one request is sent; False when it was not.

        One HTTP call with its own ``timeout_s`` and no retries (MLflow's client retries for minutes):
        once the caller's wait is over, no thread of ours can still send this move. A request already
        on the wire may yet land; the rollout controller reads the alias back before it trusts it.
        """
        if not still_wanted():
            return False
        if not self.tracking_uri.startswith("http"):
            self.set_alias(name, alias, version)
            return True
        try:
            response = httpx.post(f"{self.tracking_uri}/api/2.0/mlflow/registered-models/alias",
                                  json={"name": name, "alias": alias, "version": str(version)}, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise RegistryError(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from None
        if response.status_code != 200:
            raise RegistryError(f"MLflow at {self.tracking_uri}: setting {name}@{alias} → v{version} answered "
                                f"{response.status_code} {response.text[:200]}")
        return True

    def input_schema(self, name: str, version: str | int) -> dict[str, str] | None:
        """``{field: type}`` of the inputs a version requires (its MLflow signature); None without a signature."""
        import mlflow.models

        info = self._call(mlflow.models.get_model_info, f"models:/{name}/{version}")
        if info.signature is None or info.signature.inputs is None:
            return None
        return {str(col.name): str(getattr(col.type, "name", col.type)) for col in info.signature.inputs.inputs
                if getattr(col, "required", True) and col.name is not None}

    def delete_alias(self, name: str, alias: str) -> None:
        self._call(self._client.delete_registered_model_alias, name, alias)

    def set_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        self._call(self._client.set_model_version_tag, name, str(version), key, value)

    def register(self, model_uri: str, name: str, tags: dict[str, str] | None = None) -> ModelVersionInfo:
        """Register ``model_uri`` (e.g. a logged model's ``models:/m-…``) as a new version of ``name``, tagged."""
        import mlflow

        mv = self._call(lambda: mlflow.register_model(model_uri, name, tags=tags or {}))
        return self.version(name, mv.version)

    def _call(self, fn: Any, *args: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except MlflowException as exc:
            message = str(exc).splitlines()[0]
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in message.lower():
                raise RegistryError(message) from None
            raise RegistryError(f"MLflow at {self.tracking_uri}: {message}") from None
        except (httpx.HTTPError, OSError, ConnectionError) as exc:
            raise RegistryError(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from None


def _info(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
        tags=dict(mv.tags or {}),
        source=mv.source,
        status=str(mv.status),
    )
