"""Prometheus metrics: the instruments on a registry of their own, the scrape-time gauges, and
the HTTP endpoint that serves them.

Naming follows Prometheus conventions: every name starts with ``cofounder_``, counters end in
``_total``, durations are ``_seconds``, money is microdollars. Labels are bounded: no job,
escalation or principal ids; model names are capped (see :data:`MAX_MODEL_LABELS`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cofounder_server.observability.instruments import OFF, Instruments
from cofounder_server.observability.instruments import Counter as CounterLike
from cofounder_server.observability.instruments import Histogram as HistogramLike
from cofounder_server.observability.loop_metrics import CounterFamily, HistogramFamily, LoopCounter

log = logging.getLogger(__name__)

MAX_MODEL_LABELS = 32
"""Distinct ``model`` label values; later models are counted as ``other``. Brains report the
model they used, and a job may name any model, so the set is capped."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a cached read (sub-millisecond) to a slow SQL outage (seconds)."""

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

ESCALATION_TRIGGERS = ("repeated_error", "unretryable_error", "agent_question", "tool_approval")
"""The ``trigger`` label values (``EscalationTrigger``), bound up front so each series exists
from zero."""

DECISION_SOURCES = ("person", "service", "deadline")
"""The ``source`` label values (``DecisionSource``), bound up front likewise."""


class PrometheusInstruments(Instruments):
    """The instruments, recording into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterFamily:
            return CounterFamily(registry, name, doc, tuple(labels))

        def histogram(
            name: str, doc: str, buckets: Iterable[float], labels: Iterable[str] = ()
        ) -> HistogramFamily:
            return HistogramFamily(registry, name, doc, tuple(buckets), tuple(labels))

        self.events_appended = counter(
            "cofounder_events_appended", "Events stored in SQL (job and escalation)"
        ).labels()
        # Incremented once per batch sent to each watcher: thousands of watchers share a batch.
        self.events_delivered = counter("cofounder_events_delivered", "Events sent to watch streams").labels()
        self.watchers_too_slow = counter(
            "cofounder_watchers_too_slow", "Watch streams ended because the client fell too far behind"
        ).labels()
        self.iterations = counter("cofounder_executor_iterations", "Agent iterations committed").labels()
        self.group_commit_size = histogram(
            "cofounder_group_commit_iterations", "Iterations committed per group commit", BATCH_BUCKETS
        ).labels()
        self.group_commit_seconds = histogram(
            "cofounder_group_commit_duration_seconds", "Duration of one group commit", LATENCY_BUCKETS
        ).labels()
        claims = counter("cofounder_lease_claims", "Jobs claimed by this process", ["kind"])
        self.lease_claims_queued = claims.labels("queued")
        self.lease_claims_running = claims.labels("running")
        self.lease_takeovers = counter(
            "cofounder_lease_takeovers", "Running jobs claimed from another runner whose lease expired"
        ).labels()
        self.leases_lost = counter(
            "cofounder_leases_lost", "Jobs this process stopped running because it no longer held them"
        ).labels()
        self.sql_errors = counter(
            "cofounder_sql_errors", "SQL failures that made the database unavailable"
        ).labels()
        sql_seconds = histogram(
            "cofounder_sql_transaction_duration_seconds",
            "Duration of SQL transactions",
            LATENCY_BUCKETS,
            ["kind"],
        )
        self.sql_read_seconds = sql_seconds.labels("read")
        self.sql_write_seconds = sql_seconds.labels("write")
        self.redis_errors = counter(
            "cofounder_redis_errors", "Redis connection failures and timeouts"
        ).labels()
        self._redis_seconds = histogram(
            "cofounder_redis_operation_duration_seconds",
            "Duration of Redis operations",
            LATENCY_BUCKETS,
            ["operation"],
        )
        self._redis_children: dict[str, HistogramLike] = {}
        self._model_calls = counter("cofounder_model_calls", "Model calls", ["model"])
        self._model_tokens = counter("cofounder_model_tokens", "Model tokens", ["model", "direction"])
        self._model_cost = counter(
            "cofounder_model_cost_microdollars", "Cost of model calls in microdollars", ["model"]
        )
        self._models: dict[str, tuple[LoopCounter, LoopCounter, LoopCounter, LoopCounter]] = {}
        raised = counter("cofounder_escalations_raised", "Escalations raised by agents", ["trigger"])
        self._raised = {trigger: raised.labels(trigger) for trigger in ESCALATION_TRIGGERS}
        resolved = counter("cofounder_escalations_resolved", "Escalations decided with an option", ["source"])
        self._resolved = {source: resolved.labels(source) for source in DECISION_SOURCES}
        self.escalations_expired = counter(
            "cofounder_escalations_expired", "Escalations whose deadline passed without a default option"
        ).labels()

    def escalations_raised(self, trigger: str) -> CounterLike:
        return self._raised.get(trigger, OFF)

    def escalations_resolved(self, source: str) -> CounterLike:
        return self._resolved.get(source, OFF)

    def redis_seconds(self, operation: str) -> HistogramLike:
        child = self._redis_children.get(operation)
        if child is None:
            child = self._redis_children[operation] = self._redis_seconds.labels(operation)
        return child

    def model_call(self, model: str, input_tokens: int, output_tokens: int, cost_microdollars: int) -> None:
        children = self._models.get(model)
        if children is None:
            label = model if len(self._models) < MAX_MODEL_LABELS else "other"
            children = (
                self._model_calls.labels(label),
                self._model_tokens.labels(label, "input"),
                self._model_tokens.labels(label, "output"),
                self._model_cost.labels(label),
            )
            if label != "other":
                self._models[model] = children
        calls, tokens_in, tokens_out, cost = children
        calls.inc()
        tokens_in.inc(max(0, input_tokens))
        tokens_out.inc(max(0, output_tokens))
        cost.inc(max(0, cost_microdollars))


@dataclass(frozen=True)
class JobCounts:
    """What the scrape-time SQL read of the jobs table reports (see :class:`StateCollector`)."""

    by_status: dict[str, int]
    """Jobs per status."""
    running_by_agent_state: dict[str, int]
    """Running jobs per agent state."""
    oldest_state_change: dict[str, float]
    """Per agent state: seconds since the least recently changed running job in it changed."""
    running_unleased: int
    """Running jobs without a live lease (no runner, or its lease expired)."""
    lease_holders: int
    """Distinct runners holding a live lease on a running job."""
    escalations_pending: int = 0
    """Escalations waiting for an answer."""
    oldest_pending_escalation: float = 0.0
    """Seconds since the oldest pending escalation was raised (0 with none pending)."""


@dataclass(frozen=True)
class ExecutorGauges:
    """This process's agents right now."""

    awake: int
    parked: int
    awake_memory_bytes: int = 0
    """What the awake agents are charged, by estimate (``executor.slots``)."""
    awake_memory_budget_bytes: int = 0


class StateCollector(Collector):
    """Gauges computed when Prometheus scrapes: job counts from one SQL query (cached for
    ``max_age_seconds``, so frequent scrapes cost nothing more), and this process's agents.

    Scrapes run on the HTTP server's thread; the SQL query runs on the server's event loop.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count_jobs: Callable[[], Awaitable[JobCounts]],
        executor: Callable[[], ExecutorGauges | None],
        *,
        max_age_seconds: float = 5.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        self._loop = loop
        self._count_jobs = count_jobs
        self._executor = executor
        self._max_age = max_age_seconds
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._counts: JobCounts | None = None
        self._counted_at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: describing would mean collecting, a query at registration."""
        return []

    def _job_counts(self) -> JobCounts | None:
        if _on_loop(self._loop):  # waiting here for the loop would deadlock it
            return self._counts
        with self._lock:
            if time.monotonic() - self._counted_at >= self._max_age:
                future = asyncio.run_coroutine_threadsafe(self._count(), self._loop)
                try:
                    self._counts = future.result(self._timeout)
                    self._counted_at = time.monotonic()
                except Exception as error:  # the scrape still serves the rest
                    future.cancel()
                    log.warning("metrics: cannot count jobs: %s: %s", type(error).__name__, error)
            return self._counts

    async def _count(self) -> JobCounts:
        return await self._count_jobs()

    def collect(self) -> Iterable[Metric]:
        """The gauges, as of now (job counts at most ``max_age_seconds`` old)."""
        counts = self._job_counts()
        if counts is not None:
            jobs = GaugeMetricFamily("cofounder_jobs", "Jobs by status", labels=["status"])
            for status, count in sorted(counts.by_status.items()):
                jobs.add_metric([status], count)
            yield jobs
            agents = GaugeMetricFamily("cofounder_agents", "Running jobs by agent state", labels=["state"])
            for state, count in sorted(counts.running_by_agent_state.items()):
                agents.add_metric([state], count)
            yield agents
            age = GaugeMetricFamily(
                "cofounder_agent_state_age_seconds",
                "Running jobs: seconds since the least recently changed job in each agent state changed",
                labels=["state"],
            )
            for state, seconds in sorted(counts.oldest_state_change.items()):
                age.add_metric([state], seconds)
            yield age
            yield GaugeMetricFamily(
                "cofounder_running_jobs_unleased",
                "Running jobs that no runner holds a live lease on",
                value=counts.running_unleased,
            )
            yield GaugeMetricFamily(
                "cofounder_lease_holders",
                "Runners holding a live lease on a running job",
                value=counts.lease_holders,
            )
            yield GaugeMetricFamily(
                "cofounder_escalations_pending",
                "Escalations waiting for an answer",
                value=counts.escalations_pending,
            )
            yield GaugeMetricFamily(
                "cofounder_escalation_oldest_pending_age_seconds",
                "Seconds since the oldest pending escalation was raised (0 with none pending)",
                value=counts.oldest_pending_escalation,
            )
        executor = self._executor()
        if executor is not None:
            yield GaugeMetricFamily(
                "cofounder_executor_agents_awake", "Agents awake in this process", value=executor.awake
            )
            yield GaugeMetricFamily(
                "cofounder_executor_agents_parked",
                "Agents parked in this process (sleeping; they cost nothing until woken)",
                value=executor.parked,
            )
            yield GaugeMetricFamily(
                "cofounder_executor_awake_memory_bytes",
                "Memory the awake agents of this process hold, by the admission estimate",
                value=executor.awake_memory_bytes,
            )
            yield GaugeMetricFamily(
                "cofounder_executor_awake_memory_budget_bytes",
                "Memory the awake agents of this process may hold (--awake-memory-mib)",
                value=executor.awake_memory_budget_bytes,
            )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def new_registry() -> CollectorRegistry:
    """A registry with the process's CPU, memory and file-descriptor metrics."""
    # The *_created series (a counter's creation time) double the series for no page or graph.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsServer:
    """The HTTP endpoint (``/metrics``) on a port of its own, served from a thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, listen: str, registry: CollectorRegistry) -> MetricsServer:
        """Serve ``registry`` on ``listen`` (``HOST:PORT``; port 0 picks one)."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {listen!r}")
        server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        return cls(server, thread)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        """``HOST:PORT`` it listens on, with the port it got when asked for port 0."""
        host = str(self._server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving (waits for a scrape in progress)."""
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
        await asyncio.to_thread(self._thread.join, 5.0)
