"""Input compatibility of two model versions: which fields the candidate requires that the baseline does not.

A schema is ``{field: kind}`` of the fields a version's preprocessing requires in every request
(the inputs of its MLflow signature; :meth:`cluster.registry.Registry.input_schema`). Callers
of the baseline send the baseline's fields; a field only the candidate requires would make the
candidate answer 422 to them, so a rollout is refused before any traffic moves.
"""

from __future__ import annotations


def new_required_fields(baseline: dict[str, str], candidate: dict[str, str]) -> list[str]:
    """Fields the candidate requires that the baseline does not, sorted."""
    return sorted(set(candidate) - set(baseline))


def describe_schema(schema: dict[str, str]) -> str:
    """``{x1: numeric, color: categorical}`` as one line for an error message."""
    return "{" + ", ".join(f"{name}: {kind}" for name, kind in schema.items()) + "}"
