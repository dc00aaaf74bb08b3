"""Thompson sampling over N arms: traffic shares, P(best) per arm, and the decision that ends a bandit.

Each arm keeps sufficient statistics of its rewards (:class:`ArmRewards`: count, sum, sum of squares),
so a rollout persists a few numbers per arm, never the samples. Two reward models:

* ``bernoulli`` — 0/1 rewards (a conversion, a correct prediction): Beta(alpha + successes,
  beta + failures) posterior of the rate. Rewards in [0, 1] are taken as fractional successes.
* ``gaussian`` — continuous rewards (revenue, a score): a Normal approximation to the posterior of the
  mean, shrunk by one pseudo-observation toward the pooled mean and variance of all arms (symmetric,
  so it favours no arm): mean ~ N((sum + m0) / (n + 1), (ss + v0) / (n + 1)²).

Each arm's share is its posterior probability of being the best (Thompson sampling's probability
matching), estimated by Monte Carlo with a seeded :class:`numpy.random.Generator` so the same
rewards always give the same shares; then shares below ``min_share`` are raised to it and the rest
renormalised (every arm keeps being measured). A winner is declared once every arm has
``min_samples`` rewards and one arm's P(best) reaches ``threshold``. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Likelihood = Literal["bernoulli", "gaussian"]
DRAWS = 20_000          # Monte Carlo draws for P(best): its standard error is below 0.4 percentage points
MIN_CHANGE = 0.005      # traffic moves when a share changes by 0.5 percentage points: less is not worth an epoch


@dataclass
class ArmRewards:
    """Sufficient statistics of one arm's rewards."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, rewards: Iterable[float]) -> ArmRewards:
        values = [float(r) for r in rewards]
        return ArmRewards(self.n + len(values), self.total + sum(values), self.total_sq + sum(v * v for v in values))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmRewards:
        return cls(int(data["n"]), float(data["total"]), float(data["total_sq"]))


@dataclass(frozen=True)
class Decision:
    winner: str | None            # None: keep exploring
    prob_best: dict[str, float]
    shares: dict[str, float]      # traffic shares, floor applied, summing to 1
    reason: str


def seed_for(*parts: object) -> int:
    """A stable seed from ``parts`` (CRC-32, the same in every process, unlike ``hash()``)."""
    return zlib.crc32("\x00".join(str(p) for p in parts).encode())


def prob_best(arms: Mapping[str, ArmRewards], likelihood: Likelihood = "bernoulli", alpha: float = 1.0,
              beta: float = 1.0, seed: int = 0, draws: int = DRAWS) -> dict[str, float]:
    """P(arm has the highest mean reward) under the posterior, for every arm."""
    names = list(arms)
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        samples = np.column_stack([rng.beta(alpha + a.total, beta + max(a.n - a.total, 0.0), draws)
                                   for a in arms.values()])
    else:
        samples = np.column_stack(_gaussian_draws(list(arms.values()), rng, draws))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(names))
    return {name: float(w) / draws for name, w in zip(names, wins, strict=True)}


def _gaussian_draws(arms: list[ArmRewards], rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    n_all = sum(a.n for a in arms)
    if n_all == 0:
        return [rng.standard_normal(draws) for _ in arms]   # no data: every arm alike
    m0 = sum(a.total for a in arms) / n_all
    v0 = max(sum(a.total_sq for a in arms) / n_all - m0 * m0, 1e-12)
    out = []
    for a in arms:
        ss = max(a.total_sq - a.n * a.mean * a.mean, 0.0)       # squared deviations about the arm's mean
        mean = (a.total + m0) / (a.n + 1)
        sd = math.sqrt((ss + v0) / (a.n + 1)) / math.sqrt(a.n + 1)
        out.append(rng.normal(mean, sd, draws))
    return out


def floor_shares(weights: Mapping[str, float], min_share: float) -> dict[str, float]:
    """Raise shares below ``min_share`` to it and renormalise the rest in proportion (repeated until none is
    below). Sums to 1; every arm gets at least ``min_share``; the order of the arms is kept."""
    if min_share * len(weights) > 1 + 1e-9:
        raise ValueError(f"min_share {min_share} is more than 1/{len(weights)} arms")
    floored: set[str] = set()
    while True:
        free = [k for k in weights if k not in floored]
        mass = 1.0 - min_share * len(floored)
        total = sum(weights[k] for k in free)
        shares = {k: min_share if k in floored else
                  (mass * weights[k] / total if total > 0 else mass / len(free)) for k in weights}
        below = {k for k in free if shares[k] < min_share}
        if not below or not free:
            return shares
        floored |= below


def moved(old: Mapping[str, float], new: Mapping[str, float], min_change: float = MIN_CHANGE) -> bool:
    """True when some arm's share changed by ``min_change`` or more (or the arms differ)."""
    return set(old) != set(new) or any(abs(old[k] - new[k]) >= min_change for k in new)


def decide(arms: Mapping[str, ArmRewards], min_share: float, threshold: float, min_samples: int,
           likelihood: Likelihood = "bernoulli", alpha: float = 1.0, beta: float = 1.0,
           seed: int = 0, draws: int = DRAWS) -> Decision:
    """Shares for the next interval and, when the evidence is there, the winner."""
    p = prob_best(arms, likelihood, alpha, beta, seed, draws)
    shares = floor_shares(p, min_share)
    leader = max(p, key=lambda k: p[k])
    summary = ", ".join(f"{k} {a.mean:.4g} over {a.n} (P(best) {p[k]:.3f})" for k, a in arms.items())
    short = [k for k, a in arms.items() if a.n < min_samples]
    if short:
        return Decision(None, p, shares, f"{summary}; {', '.join(short)} below {min_samples} rewards")
    if p[leader] >= threshold:
        return Decision(leader, p, shares, f"{summary}; {leader} is best with P {p[leader]:.3f} >= {threshold:g}")
    return Decision(None, p, shares, f"{summary}; no arm reaches P(best) {threshold:g}")
