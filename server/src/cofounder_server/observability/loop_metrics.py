"""Counters and histograms updated by the event loop's thread alone: an update is a plain add,
without a lock; the scrape thread reads them through a prometheus-client collector.

prometheus-client's own ``Counter`` and ``Histogram`` take a lock per value and run several
Python calls per update (a histogram observation takes two locks). The server's instruments are
all updated from its event loop's thread, on every RPC, Redis operation and SQL transaction, so
they need no lock: the scrape thread only reads, and under the GIL a read sees each value either
before or after an add. A histogram's counts are copied in one step when scraped, so its buckets
are always consistent with its count.
"""

from __future__ import annotations

from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Child = TypeVar("Child")


class LoopCounter:
    """A monotonically increasing count."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        self.value += amount


class LoopHistogram:
    """A distribution over fixed buckets: ``counts[i]`` values fell in bucket ``i`` (the last is
    ``+Inf``)."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Record one value (in the first bucket whose upper bound is at least ``amount``)."""
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _Family(Collector, Generic[Child]):
    """Instruments of one name, one child per combination of label values."""

    def __init__(
        self, registry: CollectorRegistry, name: str, documentation: str, labelnames: Sequence[str]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    @abstractmethod
    def _new_child(self) -> Child: ...

    def labels(self, *values: str) -> Child:
        """The child of these label values, created (at zero) on first use; bind it once and
        keep it, as a lookup per update would cost more than the update."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child


class CounterFamily(_Family[LoopCounter]):
    """Counters of one name (bound with :meth:`labels`)."""

    def __init__(
        self, registry: CollectorRegistry, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> None:
        super().__init__(registry, name, documentation, labelnames)

    def _new_child(self) -> LoopCounter:
        return LoopCounter()

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class HistogramFamily(_Family[LoopHistogram]):
    """Histograms of one name over the same buckets."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        self._bounds = tuple(sorted(float(bound) for bound in buckets))
        self._le = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]  # unannotated upstream
        super().__init__(registry, name, documentation, labelnames)

    def _new_child(self) -> LoopHistogram:
        return LoopHistogram(self._bounds)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            counts = list(child.counts)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, child.sum)
        yield family
