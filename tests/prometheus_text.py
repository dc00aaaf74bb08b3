"""Reading a Prometheus text exposition (a ``/metrics`` page) in tests: the serve, cluster and monitoring suites."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_sum(exposition: str, *names: str, **labels: str) -> float:
    """The sum of the samples named ``names`` (exact sample names: a counter's ``X_total``, a histogram's ``X_sum`` or
    ``X_count``) whose labels include ``labels``, over every other label set; 0 when there is none.

    Sample names, not family names: a family also holds a counter's ``X_created`` timestamps and a histogram's
    buckets, which a sum over the family would add in.
    """
    wanted = set(names)
    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name in wanted and labels.items() <= sample.labels.items())
