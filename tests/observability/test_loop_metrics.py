"""The lock-free instruments expose exactly what prometheus-client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cofounder_server.observability.loop_metrics import CounterFamily, HistogramFamily
from cofounder_server.observability.prometheus import LATENCY_BUCKETS

OBSERVED = (0.0, 0.0004, 0.0005, 0.00051, 0.003, 0.003, 0.7, 10.0, 11.5, 1e9)


def exposition(registry: CollectorRegistry) -> list[str]:
    return sorted(generate_latest(registry).decode().splitlines())


def test_histograms_and_counters_match_prometheus_clients_own() -> None:
    reference = CollectorRegistry()
    ours = CollectorRegistry()
    reference_seconds = Histogram("x_seconds", "doc", ["method"], buckets=LATENCY_BUCKETS, registry=reference)
    reference_calls = Counter("x_calls", "doc", ["method", "code"], registry=reference)
    reference_total = Counter("x_events", "doc", registry=reference)
    our_seconds = HistogramFamily(ours, "x_seconds", "doc", LATENCY_BUCKETS, ["method"])
    our_calls = CounterFamily(ours, "x_calls", "doc", ["method", "code"])
    our_total = CounterFamily(ours, "x_events", "doc").labels()

    for amount in OBSERVED:
        reference_seconds.labels("a").observe(amount)
        our_seconds.labels("a").observe(amount)
    reference_seconds.labels("b")
    our_seconds.labels("b")
    for code in ("OK", "OK", "NOT_FOUND"):
        reference_calls.labels("a", code).inc()
        our_calls.labels("a", code).inc()
    reference_total.inc(7)
    our_total.inc(7)

    ours_lines = exposition(ours)
    assert 'x_seconds_bucket{le="0.0005",method="a"} 3.0' in ours_lines
    assert 'x_seconds_count{method="a"} 10.0' in ours_lines
    assert [line for line in exposition(reference) if "_created" not in line] == ours_lines


def test_label_values_must_match_the_label_names() -> None:
    family = CounterFamily(CollectorRegistry(), "y", "doc", ["kind"])
    with pytest.raises(ValueError, match="expected labels"):
        family.labels()
