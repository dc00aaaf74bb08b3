"""Per-request token metrics of a generation replica (``rayline_llm_*``, exported through Ray's metrics port).

Labels ``model``, ``version``, ``variant``: the router and rollout controller compare variants by
them (time to first token, inter-token latency, tokens in and out, errors, and the mean
log-probability of the generated tokens, a model-quality signal a canary can be gated on).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster import metrics

LABELS = ("model", "version", "variant")
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
NLL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)

TTFT = metrics.histogram("llm_ttft_seconds", "time from request to first generated token", LABELS, TOKEN_BUCKETS)
INTER_TOKEN = metrics.histogram("llm_inter_token_seconds", "mean time between generated tokens of a request",
                                LABELS, TOKEN_BUCKETS)
OUTPUT_TOKENS = metrics.counter("llm_output_tokens_total", "generated (completion) tokens", LABELS)
PROMPT_TOKENS = metrics.counter("llm_prompt_tokens_total", "prompt tokens of admitted requests", LABELS)
REQUESTS = metrics.counter("llm_requests_total", "generation requests answered, by outcome", (*LABELS, "outcome"))
ERRORS = metrics.counter("llm_errors_total", "requests answered with an error, by HTTP status", (*LABELS, "status"))
# Ray's histograms take positive boundaries only: the mean log-probability is exported negated
# (nats per token, lower is more confident); a gate on "mean log-prob >= x" reads "this <= -x".
MEAN_NEG_LOGPROB = metrics.histogram("llm_mean_neg_logprob", "minus the mean log-probability of a request's "
                                     "generated tokens (nats per token)", LABELS, NLL_BUCKETS)
ACTIVE = metrics.gauge("llm_active_sequences", "sequences in the replica's decode batch", LABELS)


@dataclass(frozen=True)
class RequestMetrics:
    """What one finished request reports."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    inter_token_s: float | None
    logprob_sum: float
    outcome: str          # the finish reason: stop, length, cancelled


def mean_logprob(completion_tokens: int, logprob_sum: float) -> float | None:
    """Mean natural-log probability per generated token (temperature 1, ``<= 0``); None when nothing was generated.
    The one definition behind the Prometheus histogram (minus it) and the rollout windows' ``mean_logprob``."""
    return logprob_sum / completion_tokens if completion_tokens > 0 else None


def record(labels: dict[str, str], m: RequestMetrics) -> None:
    PROMPT_TOKENS.labels(**labels).inc(m.prompt_tokens)
    OUTPUT_TOKENS.labels(**labels).inc(m.completion_tokens)
    REQUESTS.labels(**labels, outcome=m.outcome).inc()
    if m.ttft_s is not None:
        TTFT.labels(**labels).observe(m.ttft_s)
    if m.inter_token_s is not None:
        INTER_TOKEN.labels(**labels).observe(m.inter_token_s)
    if (mean := mean_logprob(m.completion_tokens, m.logprob_sum)) is not None:
        MEAN_NEG_LOGPROB.labels(**labels).observe(-mean)


def record_error(labels: dict[str, str], status: int) -> None:
    ERRORS.labels(**labels, status=str(status)).inc()
