"""The serving API's OpenAPI document, with the bodies of ``:predict`` for the model it serves.

The router's predict handler reads its body by hand (one parse, one set of error rules, see
``deployments.payload``), so FastAPI cannot infer a request schema. This module writes it from
what each served version says about itself (``ModelServer.ready``: fields, the contract's ranges,
allowed sets and vocabularies; classes for the response), so a client generator or a fuzzer
learns the payload, and every answer other than 200 is the one JSON error shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from deployments.feedback import FeedbackBody
from models.preprocessing import FLOAT32_MAX

PREDICT_PATH = "/v1/models/{name}:predict"
FEEDBACK_PATH = "/v1/models/{name}:feedback"
ERROR_STATUSES = {"400": "body is not JSON", "401": "missing or wrong bearer token",
                  "404": "this endpoint serves another model", "413": "body too large",
                  "422": "an instance breaks a field's rule (the field and rule are named)",
                  "500": "the model failed or its output was not finite", "503": "the variant is unavailable or "
                  "overloaded (Retry-After)", "504": "the model did not answer in time"}

# JSON Schema of the signature column types a python_function model may declare beyond numbers.
SIGNATURE_KINDS: dict[str, dict[str, Any]] = {"string": {"type": "string"}, "boolean": {"type": "boolean"}}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["status", "field", "message"], "properties": {
        "status": {"type": "integer"},
        "field": {"type": ["string", "null"], "description": "the request field at fault"},
        "rule": {"type": "string", "description": "required, type, finite, range, allowed, …"},
        "message": {"type": "string"}}}}}


def field_schema(field: dict[str, Any]) -> dict[str, Any]:
    """One request field as JSON Schema, from its contract rules (``ModelServer.ready``'s ``fields``)."""
    if field["kind"] == "categorical":
        return {"type": "string", "enum": list(field["vocabulary"])}
    if field["kind"] in SIGNATURE_KINDS:   # a python_function model's signature column (no contract rules)
        return dict(SIGNATURE_KINDS[field["kind"]])
    if field["kind"] != "numeric":
        return {}
    kind = "integer" if field.get("integer") else "number"
    schema: dict[str, Any] = {"type": kind}
    if field.get("allowed"):
        schema["enum"] = [int(v) if kind == "integer" else v for v in field["allowed"]]
        return schema
    lo, hi = field.get("minimum"), field.get("maximum")
    schema["minimum"] = -FLOAT32_MAX if lo is None else lo
    schema["maximum"] = FLOAT32_MAX if hi is None else hi
    if field.get("clip"):
        a, b = field["clip"]
        schema["description"] = f"values outside [{a:g}, {b:g}] are clipped to it, as in training"
    return schema


def instance_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "required": [f["name"] for f in fields if f.get("required", True)],
            "properties": {f["name"]: field_schema(f) for f in fields}}


def prediction_schema(info: dict[str, Any]) -> dict[str, Any]:
    if info.get("flavor"):   # a python_function model: any JSON value per instance
        return {}
    if info.get("task") == "classification":
        return {"type": "string", "enum": list(info.get("classes") or [])}
    return {"type": "number"}


def _one_or_all(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """A value every version accepts: one schema when the versions agree, else all of them."""
    unique = [s for i, s in enumerate(schemas) if s not in schemas[:i]]
    return unique[0] if len(unique) == 1 else {"allOf": unique}


def document(app: FastAPI, model_name: str, versions: list[dict[str, Any]], max_instances: int,
             root_path: str = "") -> dict[str, Any]:
    """The app's OpenAPI document with ``:predict``'s request and response bodies for ``model_name``.

    ``versions`` are the served versions' ``ready()`` answers; a request must suit every one of them
    (traffic may send it to any), so their instance schemas are combined with ``allOf`` when they differ.
    """
    doc = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes,
                      servers=[{"url": root_path}] if root_path else None)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Instance"] = _one_or_all([instance_schema(v["fields"]) for v in versions])
    schemas["PredictRequest"] = {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "maxItems": max_instances,
                      "items": {"$ref": "#/components/schemas/Instance"}}}}
    schemas["PredictResponse"] = {"type": "object", "required": ["predictions", "model", "version", "variant"],
                                  "properties": {
                                      "predictions": {"type": "array",
                                                      "items": _one_or_all([prediction_schema(v) for v in versions])},
                                      "model": {"type": "string", "enum": [model_name]},
                                      "version": {"type": ["string", "null"]},
                                      "variant": {"type": "string"},
                                      "request_id": {"type": "string", "description": "post feedback with it"}}}
    schemas["Error"] = ERROR_SCHEMA
    schemas["FeedbackRequest"] = FeedbackBody.model_json_schema()
    doc["paths"][FEEDBACK_PATH]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/FeedbackRequest"}}}}
    operation = doc["paths"][PREDICT_PATH]["post"]
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "name":
            parameter["schema"] = {"type": "string", "enum": [model_name]}
    operation["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    operation["responses"] = {
        "200": {"description": "one prediction per instance, in order",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
        **{status: {"description": text, "content": error} for status, text in ERROR_STATUSES.items()}}
    return doc
