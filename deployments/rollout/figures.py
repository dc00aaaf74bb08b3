"""What MLflow knows of a model version's quality, as :class:`~deployments.rollout.quality.Figures`.

Two sources, both on a dataset version's validation split:

* the version's tags, written at registration by :func:`train.tracking.finish` (``dataset``,
  ``dataset_version`` and every ``val_*`` figure of the training run);
* evaluation runs of ``jobs.evaluate`` (tags ``rayline.job=evaluate``, ``model=NAME/VERSION``,
  ``dataset``, ``dataset_version``; metrics ``eval_*``).

:func:`read_figures` is what the rollout controller reads (a few MLflow calls, under its
timeout). :func:`evaluate_on_latest` is the fresh evaluation for when the two versions share no
dataset version: it scores both on the latest version of the dataset with the evaluation job's own
code, so it runs where a long call is fine — ``rayline canary start``, not the controller.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.registry import ModelVersionInfo, Registry
from deployments.rollout.quality import Figures, QualityResult, compare, gate_applies, metric_key
from deployments.rollout.spec import QualityGate, RolloutSpec, ref_uri

logger = logging.getLogger(__name__)

EVALUATE_JOB = "evaluate"


def from_version_tags(tags: dict[str, str]) -> Figures | None:
    """The training run's validation figures, as tagged on the registered version (None without lineage)."""
    metrics = _numbers({k: v for k, v in tags.items() if k.startswith("val_")})
    dataset, version = tags.get("dataset"), tags.get("dataset_version")
    if not dataset or not version or not metrics:
        return None
    return Figures(dataset, version, metrics, "training run")


def from_evaluation_run(run: Any) -> Figures | None:
    """An evaluation run's ``eval_*`` figures and the dataset version it scored."""
    tags = run.data.tags
    metrics = _numbers({k: v for k, v in run.data.metrics.items() if k.startswith("eval_") and k != "eval_rows"})
    if not tags.get("dataset") or not tags.get("dataset_version") or not metrics:
        return None
    return Figures(tags["dataset"], tags["dataset_version"], metrics, f"evaluation run {run.info.run_id[:8]}",
                   at=float(run.info.start_time or 0))


def read_figures(registry: Registry, info: ModelVersionInfo) -> list[Figures]:
    """Every set of figures MLflow holds for one registered version. Raises RegistryError."""
    found = [f for f in [from_version_tags(info.tags)] if f is not None]
    runs = registry.runs(f"tags.`rayline.job` = '{EVALUATE_JOB}' AND tags.model = '{info.name}/{info.version}'")
    return found + [f for f in map(from_evaluation_run, runs) if f is not None]


def judge(registry: Registry, gate: QualityGate, baseline: ModelVersionInfo, candidate: ModelVersionInfo
          ) -> QualityResult:
    """Read both versions' figures and compare them (the controller's gate). Raises RegistryError."""
    return compare(gate, baseline.version, candidate.version, read_figures(registry, baseline),
                   read_figures(registry, candidate))


def check_before_start(settings: Any, spec: RolloutSpec, fresh: bool = True) -> tuple[QualityResult | None, list[str]]:
    """The gate as ``rayline canary start`` runs it before deploying: when the two versions share no
    dataset version, evaluate both on the latest one first (``fresh``). None when the spec turns it off."""
    if not gate_applies(spec):
        return None, []
    registry = Registry(settings)
    infos = [registry.resolve(ref_uri(spec.model, ref)) for ref in (spec.baseline, spec.candidate)]
    figures = {info.version: read_figures(registry, info) for info in infos}
    base, cand = (info.version for info in infos)
    result = compare(spec.quality, base, cand, figures[base], figures[cand])
    lines: list[str] = []
    if fresh and not result.measured:
        lines = evaluate_on_latest(registry, settings, infos, figures)
        result = compare(spec.quality, base, cand, figures[base], figures[cand])
    return result, lines


def evaluate_on_latest(registry: Registry, settings: Any, infos: list[ModelVersionInfo],
                       figures: dict[str, list[Figures]]) -> list[str]:
    """Evaluate, on the latest version of their dataset, the versions that have no figures there yet.

    Uses :func:`train.evaluation.evaluate` (the evaluation job's code), which logs an evaluation run
    that :func:`read_figures` then finds. Returns one line per version evaluated or not evaluable.
    """
    from ingest.catalog import Catalog
    from train.evaluation import evaluate

    dataset = next((i.tags["dataset"] for i in reversed(infos) if i.tags.get("dataset")), None)
    if dataset is None:
        return ["no fresh evaluation: neither version names its dataset (tag 'dataset')"]
    try:
        latest = str(Catalog(settings.datasets_root).latest(dataset).version)
    except Exception as exc:   # the catalog is not reachable from here: the gate will say what is missing
        return [f"no fresh evaluation: latest version of {dataset} unknown ({exc})"]
    lines = []
    for info in infos:
        if any((f.dataset, f.dataset_version) == (dataset, latest) for f in figures.get(info.version, [])):
            continue
        try:
            result = evaluate(settings, info.uri, dataset, latest)
            lines.append(f"evaluated v{info.version} on {dataset} version {latest} (run {result.run_id[:8]})")
        except Exception as exc:   # a model the evaluation job cannot score: the gate then fails closed
            lines.append(f"could not evaluate v{info.version} on {dataset} version {latest}: {exc}")
        figures[info.version] = read_figures(registry, info)
    return lines


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in values.items():
        try:
            out[metric_key(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return out
