"""Any MLflow ``python_function`` model as rayline serves it: requirements checked, inputs held to its signature.

A registry's models are mostly not rayline's (scikit-learn, XGBoost, custom ``pyfunc`` with
``code_paths``); the router and the rollout controller do not care, so the model server loads
them through ``mlflow.pyfunc.load_model`` (which puts ``code_paths`` on ``sys.path``).

- **Requirements** are checked before loading: every package of the model's ``requirements.txt``
  must be installed in the replica, else :class:`MissingRequirements` names them (one line: the
  replica's startup error). Nothing is pip-installed at run time; a version other than the one
  logged is only a warning, as MLflow itself does.
- **Inputs**: each request is checked on its own against the signature, so one bad request never
  fails its batch: a required field missing or null, or a JSON value of the wrong kind for its
  column (MLflow's JSON conversion would silently turn ``"5"`` into a number or truncate ``3.5``
  to ``3``), is an :class:`InputError` naming the field and the rule. The request is then turned
  into a DataFrame as MLflow's scoring server does and held to the schema by MLflow's own
  enforcement (``mlflow.models.validate_schema``); what that rejects is also an ``InputError``.
- **Outputs** (ndarray, Series, DataFrame, list) become one JSON value per instance.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import RaylineError
from models.preprocessing import InputError

logger = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements.txt"
# JSON kinds a request value must have for a column of each MLflow type (others are left to MLflow).
NUMBER_TYPES = {"double", "float"}
INTEGER_TYPES = {"long", "integer"}


class NonFiniteOutput(ValueError):
    """The model answered NaN or infinity: that request's 500 with rule ``finite_output``."""


class MissingRequirements(RaylineError):
    """A model needs packages the replica does not have; ``str`` names them (rayline never pip-installs)."""

    exit_code = 11


def missing_requirements(requirements_txt: str) -> tuple[list[str], list[str]]:
    """(requirements not installed, requirements installed at another version) of a ``requirements.txt``.

    Lines that are not plain requirements (``-r``, ``-c``, URLs, comments) and requirements whose
    environment marker does not apply here are skipped.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    missing, other_version = [], []
    for line in requirements_txt.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            logger.warning("requirement %r not understood; not checked", line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            other_version.append(f"{req} (installed {installed})")
    return missing, other_version


def check_requirements(local: Path, uri: str) -> None:
    """Raise :class:`MissingRequirements` when a package the model at ``local`` needs is not installed."""
    found = next(local.rglob(REQUIREMENTS_FILE), None)
    if found is None:
        return
    missing, other_version = missing_requirements(found.read_text())
    if other_version:
        logger.warning("model %s was logged with other package versions: %s", uri, ", ".join(other_version))
    if missing:
        raise MissingRequirements(f"model {uri} needs packages that are not installed in the serving image: "
                                  f"{', '.join(missing)} (install them in the image; rayline does not "
                                  f"pip-install at run time)")


@dataclass
class PyfuncModel:
    """A loaded ``python_function`` model and its signature's input schema (None: unchecked inputs)."""

    model: Any            # mlflow.pyfunc.PyFuncModel
    uri: str
    flavor: str           # the flavor that loads it, e.g. "mlflow.sklearn"
    schema: Any           # mlflow.types.Schema | None

    def frame(self, instances: list[dict[str, Any]]) -> Any:
        """One request's instances → a DataFrame its model accepts; InputError naming the field otherwise."""
        import pandas as pd
        from mlflow.utils.proto_json_utils import parse_instances_data

        for item in instances:
            if not isinstance(item, dict):
                raise InputError("instances", f"each instance must be an object, got {type(item).__name__}")
        if self.schema is None or not self.schema.has_input_names():
            return pd.DataFrame.from_records(instances)
        for spec in self.schema.inputs:
            for item in instances:
                check_value(spec, item.get(spec.name))
        sent = {key for item in instances for key in item}   # a field some instances leave out is null in those
        rows = [{**dict.fromkeys(sent), **item} for item in instances]
        try:
            frame = pd.DataFrame(parse_instances_data({"instances": rows}, self.schema))
            validate_frame(frame, self.schema)
        except InputError:
            raise
        except Exception as exc:  # MLflow's own conversion/enforcement refused it: the caller's to fix
            raise InputError(self._culprit(str(exc)), first_line(exc), "schema") from None
        return frame

    def _culprit(self, message: str) -> str:
        """The input a schema message is about (the first one it names: quoted, or after column/input), else
        ``instances``."""
        return next((spec.name for spec in self.schema.inputs if spec.name and re.search(
            rf"'{re.escape(spec.name)}'|\b(?:column|input)s?\W+{re.escape(spec.name)}\b", message)), "instances")

    def predict(self, frames: list[Any]) -> list[list[Any] | Exception]:
        """One ``predict`` over every request's frame; each request's outputs, or the error for all of them."""
        import pandas as pd

        sizes = [len(f) for f in frames]
        try:
            outputs = json_rows(self.model.predict(pd.concat(frames, ignore_index=True)))
            if len(outputs) != sum(sizes):
                raise ValueError(f"predict returned {len(outputs)} outputs for {sum(sizes)} instances")
        except Exception as exc:  # a model error is each request's 500, not a dead replica
            logger.warning("model %s failed on a batch of %d: %s", self.uri, len(sizes), exc)
            return [exc] * len(sizes)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [outputs[start:start + size] for start, size in zip(starts, sizes, strict=True)]

    def fields(self) -> list[dict[str, Any]]:
        """The signature's named inputs in the shape of ``ModelServer.ready``'s ``fields`` (for GET and OpenAPI)."""
        if self.schema is None or not self.schema.has_input_names():
            return []
        return [signature_field(spec) for spec in self.schema.inputs]


def load_pyfunc(local: Path, uri: str) -> PyfuncModel:
    """Load the model downloaded to ``local`` (requirements checked first; ``code_paths`` go on ``sys.path``)."""
    import mlflow.pyfunc

    check_requirements(local, uri)
    model = mlflow.pyfunc.load_model(str(local))
    return PyfuncModel(model=model, uri=uri, flavor=str(model.metadata.flavors["python_function"].get(
        "loader_module", "python_function")), schema=model.metadata.get_input_schema())


def check_value(spec: Any, value: Any) -> None:
    """One value against its column: present when required, and of the JSON kind the column's type needs."""
    name, kind = spec.name, str(getattr(spec.type, "name", spec.type))
    if value is None:
        if getattr(spec, "required", True):
            raise InputError(name, "is required", "required")
        return
    if kind in NUMBER_TYPES | INTEGER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(name, f"must be a number ({kind}), got {type(value).__name__}")
        if not math.isfinite(value):
            raise InputError(name, "must be finite", "finite")
        if kind in INTEGER_TYPES and not float(value).is_integer():
            raise InputError(name, f"{value!r} is not a whole number (the signature's type is {kind})")
    elif kind == "string" and not isinstance(value, str):
        raise InputError(name, f"must be a string, got {type(value).__name__}")
    elif kind == "boolean" and not isinstance(value, bool):
        raise InputError(name, f"must be true or false, got {type(value).__name__}")


def validate_frame(frame: Any, schema: Any) -> None:
    """MLflow's schema enforcement (the public ``validate_schema``) on one request's frame."""
    from mlflow.models import validate_schema

    validate_schema(frame, schema)


def signature_field(spec: Any) -> dict[str, Any]:
    """A signature column as a request field: the keys ``deployments.model_server.field_rules`` writes."""
    kind = str(getattr(spec.type, "name", spec.type))
    numeric = kind in NUMBER_TYPES | INTEGER_TYPES
    return {"name": spec.name, "kind": "numeric" if numeric else kind, "vocabulary": [], "minimum": None,
            "maximum": None, "allowed": [], "integer": kind in INTEGER_TYPES, "clip": None,
            "required": bool(getattr(spec, "required", True))}


def json_rows(output: Any) -> list[Any]:
    """A model's output as one JSON value per instance (numpy and pandas types made plain; NaN is refused)."""
    import numpy as np
    import pandas as pd

    if isinstance(output, pd.DataFrame):
        rows = json.loads(output.to_json(orient="records"))
    elif isinstance(output, pd.Series | np.ndarray):
        rows = np.asarray(output).tolist()
    elif isinstance(output, list | tuple):
        rows = [r.tolist() if isinstance(r, np.ndarray | np.generic) else r for r in output]
    else:
        raise TypeError(f"predict returned {type(output).__name__}, not one output per instance")
    try:
        json.dumps(rows, allow_nan=False)
    except ValueError:
        raise NonFiniteOutput("model output is not finite (nan/inf)") from None
    return rows


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
