"""The composition root: builds every part from Settings and owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cofounder.agent.v1 import agent_control_service_pb2, escalation_service_pb2
from cofounder_server.api import convert, reflection
from cofounder_server.api.agent_control import AgentControlApi
from cofounder_server.api.escalations import EscalationApi
from cofounder_server.api.handlers import service_handler
from cofounder_server.api.health import HealthMonitor, HealthServicer
from cofounder_server.auth.limits import Monotonic
from cofounder_server.auth.security import Security
from cofounder_server.causes import describe_cause
from cofounder_server.clock import Clock, SystemClock
from cofounder_server.config import Settings
from cofounder_server.datadir import DataDirError, DataDirLock
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.model import Job
from cofounder_server.events.fleet import FleetFanOut
from cofounder_server.events.hub import EventHub
from cofounder_server.executor.brains.provider_access import parse_model_concurrency
from cofounder_server.executor.loop import AgentRun
from cofounder_server.executor.prices import PriceTable
from cofounder_server.executor.registry import PluginRegistry
from cofounder_server.executor.run_state import LoopLimits
from cofounder_server.executor.run_store import RunStores
from cofounder_server.executor.service import Executor, runner_id_for
from cofounder_server.executor.writer import RecordWriter
from cofounder_server.listen import ListenError, check_can_listen
from cofounder_server.live import keys
from cofounder_server.live.client import LiveClient
from cofounder_server.live.engine import EmbeddedRedis
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.observability.prometheus import ExecutorGauges
from cofounder_server.observability.tracing import Tracer
from cofounder_server.observability.wiring import Observability
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.services.escalation_feed import EscalationFeed
from cofounder_server.services.escalations import DeadlineTimer, EscalationService
from cofounder_server.services.fleet_feed import FleetStatuses, FleetStream, JobFleetFeed
from cofounder_server.services.job_feed import JobEventFeed
from cofounder_server.services.jobs import JobService
from cofounder_server.services.status import LiveStatus
from cofounder_server.services.submissions import SubmissionWriter
from cofounder_server.store.checkpoints import CheckpointStore, RunStart
from cofounder_server.store.database import Database, async_url, open_database
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.fleet import FleetRepository
from cofounder_server.store.job_counts import count_jobs
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.migrate import upgrade_to_head
from cofounder_server.store.runners import RunnerLeases
from cofounder_server.store.runs import RunRepository
from cofounder_server.store.tool_executions import ToolExecutionRepository

log = logging.getLogger(__name__)

AGENT_CONTROL = agent_control_service_pb2.DESCRIPTOR.services_by_name["AgentControlService"]
ESCALATIONS = escalation_service_pb2.DESCRIPTOR.services_by_name["EscalationService"]
SERVICE_NAMES = (AGENT_CONTROL.full_name, ESCALATIONS.full_name)
SERVED_METHODS = (
    *(
        f"/{service.full_name}/{method.name}"
        for service in (AGENT_CONTROL, ESCALATIONS, health_pb2.DESCRIPTOR.services_by_name["Health"])
        for method in service.methods
    ),
    *reflection.METHODS,
)
"""Every method this server serves: the values of the RPC metrics' ``method`` label."""


def _fleet_feed(
    stack: contextlib.AsyncExitStack,
    hub: EventHub,
    clock: Clock,
    *,
    database: Database,
    ledger: LedgerRepository,
    event_log: EventLogRepository,
) -> JobFleetFeed:
    """WatchJobs' feed, and the process's fan-out of the fleet feed it shares (stopped with ``stack``)."""
    fleet = FleetRepository(database)
    statuses = FleetStatuses(fleet, ledger, event_log, clock, convert.encode_status)
    stream = FleetStream(fleet, statuses)
    fan_out = FleetFanOut(hub, stream, stream.read_page, clock)
    stack.push_async_callback(fan_out.stop)
    return JobFleetFeed(fleet, statuses, fan_out, hub, clock)


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        # A second server must not silently share the port (grpcio defaults this to 1)
        # unless the operator asked for several processes on one port.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Long-lived watch streams: ping idle connections, and accept clients that ping us
        # every 30 s or more without answering them with GOAWAY too_many_pings.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        # Calls wait in gRPC core until the asyncio loop takes them; past 1,000 waiting (the
        # default) core drops new ones. Thousands of watchers reconnect at once after a restart.
        ("grpc.server.max_pending_requests", 10_000),
        ("grpc.server.max_pending_requests_hard_limit", 20_000),
        *_connection_age_options(settings),
    ]


def _connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """A connection lives only so long: a client pinned to one replica (HTTP/2 keeps one
    connection for everything) reconnects now and then, and a replica added later gets its
    share. Open streams end with UNAVAILABLE after the grace and resume from their cursor."""
    if settings.max_connection_age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_seconds * 1000)),
    ]


def _check_durations(settings: Settings) -> None:
    """``SystemExit`` in one line for a negative duration among the drain settings."""
    for name in (
        "shutdown_grace_seconds",
        "drain_pause_seconds",
        "max_connection_age_seconds",
        "max_connection_age_grace_seconds",
    ):
        value = getattr(settings, name)
        if value < 0:
            raise SystemExit(f"invalid --{name.replace('_', '-')} {value:g}: must be 0 or more")


async def _start_embedded_redis(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    engine = EmbeddedRedis(settings.data_dir)
    redis_url = await engine.start()
    stack.push_async_callback(engine.stop)
    log.info("embedded Redis engine running on %s", redis_url)
    return redis_url


async def _open_storage(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[str, LiveClient, str, Database]:
    """Redis and the migrated database; ``SystemExit`` in one line when either is unreachable."""
    # An unreachable external Redis is refused before the schema is migrated.
    redis_url = settings.redis_url
    live = await _connect_redis(redis_url, stack) if redis_url else None
    database_url = settings.effective_database_url
    try:
        await upgrade_to_head(database_url)
    except Unavailable as error:
        raise SystemExit(
            f"cannot reach the database {_redacted(database_url)}: {describe_cause(error)}"
        ) from error
    database = await open_database(database_url)
    stack.push_async_callback(database.close)
    if live is None:
        redis_url = await _start_embedded_redis(settings, stack)
        live = await _connect_redis(redis_url, stack)
    return redis_url, live, database_url, database


async def _connect_redis(url: str, stack: contextlib.AsyncExitStack) -> LiveClient:
    try:
        live = LiveClient(url)
    except ValueError as error:
        raise SystemExit(f"invalid --redis-url: {error}") from error
    stack.push_async_callback(live.aclose)
    try:
        await live.ping()
    except Unavailable as error:
        raise SystemExit(f"cannot reach Redis at {_redacted(url)}: {describe_cause(error)}") from error
    return live


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL (or a list of hosts) is reported by whoever opens it
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


# ``scheme://user:password@``: the password goes, wherever the URL is not otherwise parsable.
_PASSWORD_IN_URL = re.compile(r"^([^:/?#]+://[^:@/?#]*:)[^@/?#]*@")


async def _start_executor(
    settings: Settings,
    clock: Clock,
    stack: contextlib.AsyncExitStack,
    *,
    database: Database,
    event_log: EventLogRepository,
    ledger: LedgerRepository,
    changes: ChangePipeline,
    live: LiveClient,
    prices: PriceTable,
    registry: PluginRegistry,
    escalations: EscalationRepository,
    deadlines: DeadlineTimer,
) -> Executor:
    runner_id = runner_id_for(settings.runner_id, settings.data_dir)
    runs = RunRepository(database, event_log)
    checkpoints = CheckpointStore(database, event_log)
    writer = RecordWriter(checkpoints, changes, clock, runner_id)
    stores = RunStores(
        runs=runs,
        checkpoints=checkpoints,
        ledger=ledger,
        event_log=event_log,
        escalations=escalations,
        writer=writer,
        changes=changes,
        clock=clock,
        runner_id=runner_id,
        deadline_raised=deadlines.raised,
        tool_executions=ToolExecutionRepository(database, event_log),
    )
    limits = LoopLimits(
        max_tool_calls=settings.max_tool_calls,
        result_limit=settings.tool_result_limit_chars,
        brain_retries=settings.brain_retries,
        brain_retry_delay=settings.brain_retry_delay_seconds,
        tool_attempts=settings.tool_error_attempts,
        tool_retry_delay=settings.tool_retry_delay_seconds,
        max_escalations=settings.max_escalations_per_job,
        provider_wait_limit=settings.provider_wait_limit_seconds,
    )

    def new_run(job: Job, start: RunStart | None, on_size: Callable[[int], None]) -> AgentRun:
        return AgentRun(
            stores.for_job(job),
            start=start,
            plugins=registry,
            prices=prices,
            clock=clock,
            limits=limits,
            on_size=on_size,
        )

    executor = Executor(
        runs=runs,
        leases=RunnerLeases(database),
        writer=writer,
        changes=changes,
        live=live,
        clock=clock,
        runner_id=runner_id,
        new_run=new_run,
        awake_memory_bytes=settings.awake_memory_mib * 1024 * 1024,
        max_running_jobs=settings.max_running_jobs,
        lease_seconds=settings.lease_seconds,
        claim_interval_seconds=settings.claim_interval_seconds,
        sweep_interval_seconds=settings.sweep_interval_seconds,
        wake_jitter_seconds=settings.wake_jitter_seconds,
    )
    changes.attach_runner(executor)
    await executor.start()
    # Stops before Redis and SQL close (the stack unwinds in reverse).
    stack.push_async_callback(executor.stop, settings.shutdown_grace_seconds)
    log.info(
        "executor running as %s (awake agents within %d MiB%s)",
        runner_id,
        settings.awake_memory_mib,
        f", at most {settings.max_running_jobs}" if settings.max_running_jobs else "",
    )
    return executor


@dataclass
class Application:
    """A running server and everything it owns. Build it with :meth:`start`."""

    settings: Settings
    clock: Clock
    port: int
    redis_url: str
    database_url: str
    health_monitor: HealthMonitor
    security: Security
    database: Database
    """The server's SQL engine (what its repositories write through)."""
    _server: grpc.aio.Server
    _cleanup: contextlib.AsyncExitStack
    stopping: asyncio.Event
    event_log: EventLogRepository
    """Every job's event log in SQL."""
    changes: ChangePipeline
    """Takes every committed change downstream (live keys, fan-out, runner)."""
    escalation_feed: EscalationFeed
    """Appends to the escalation feed (what escalation handling calls)."""
    event_hub: EventHub
    executor: Executor | None
    """The agent executor (``None`` with ``executor_enabled`` false)."""
    metrics_port: int | None = None
    """The port ``/metrics`` is served on (``None``: metrics off)."""
    _draining: bool = False

    @classmethod
    async def start(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        *,
        monotonic: Monotonic | None = None,
        plugins: PluginRegistry | None = None,
        tracer: Tracer | None = None,
    ) -> Application:
        """Start Redis (embedded unless a URL is set), migrate SQL, serve gRPC, then run agents.

        ``monotonic`` times the per-principal rate limits (``time.monotonic`` by default);
        ``plugins`` replaces ``PluginRegistry.default(settings)`` (tests, embedding);
        ``tracer`` replaces the one ``--otlp-endpoint`` configures (tests, embedding).
        """
        clock = clock or SystemClock()
        _check_durations(settings)
        # Security settings are checked before anything starts: a refusal has no side effects.
        security = Security.from_settings(settings, monotonic or time.monotonic)
        try:
            prices = PriceTable.parse(settings.price_table)
        except (OSError, ValueError) as error:
            raise SystemExit(f"invalid --price-table: {error}") from error
        try:
            parse_model_concurrency(settings.model_concurrency)
        except ValueError as error:
            raise SystemExit(f"invalid --model-concurrency: {error}") from error
        try:
            async_url(settings.effective_database_url)
        except (ArgumentError, ValueError) as error:
            raise SystemExit(f"invalid --database-url: {error}") from error
        if settings.reuse_port and not (settings.redis_url and settings.database_url):
            # Processes sharing a port must share the record and the live layer; each one's
            # embedded Redis and SQLite file would make callers see a different server per
            # connection.
            raise SystemExit("--reuse-port needs --redis-url and --database-url shared by every process")
        # Nothing touches the data directory (Redis socket, SQLite file, runner id) before
        # this process holds it.
        try:
            data_dir_lock = await asyncio.to_thread(DataDirLock.acquire, settings.data_dir)
        except DataDirError as error:
            raise SystemExit(str(error)) from error
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        stack.callback(data_dir_lock.release)
        try:
            await asyncio.to_thread(check_can_listen, settings.listen, reuse_port=settings.reuse_port)
            return await cls._build(
                settings, clock, security, stack, prices=prices, registry=plugins, tracer=tracer
            )
        except ListenError as error:
            await stack.aclose()
            raise SystemExit(str(error)) from error
        except BaseException:
            await stack.aclose()
            raise

    @classmethod
    async def _build(
        cls,
        settings: Settings,
        clock: Clock,
        security: Security,
        stack: contextlib.AsyncExitStack,
        *,
        prices: PriceTable,
        registry: PluginRegistry | None,
        tracer: Tracer | None = None,
    ) -> Application:
        observed = Observability.build(
            stack,
            metrics=bool(settings.metrics_listen),
            otlp_endpoint=settings.otlp_endpoint,
            methods=SERVED_METHODS,
            tracer=tracer,
        )
        if registry is None:
            registry = PluginRegistry.default(settings)
            stack.push_async_callback(registry.aclose)
        redis_url, live, database_url, database = await _open_storage(settings, stack)
        cache = TrackedCache(
            redis_url,
            [keys.AGENT_KEY_PREFIX, keys.JOB_KEY_PREFIX],
            max_entries=settings.status_cache_entries,
        )
        await cache.start()
        stack.push_async_callback(cache.stop)

        event_log = EventLogRepository(database, retention_events=settings.event_retention_events)
        jobs = JobRepository(database, event_log)
        ledger = LedgerRepository(database)
        changes = ChangePipeline(
            live,
            cache,
            clock,
            convert.encode_job_event,
            encode_escalation=convert.encode_escalation_event,
            encode_status=convert.encode_status,
            jobs=jobs,
            ledger=ledger,
            event_log=event_log,
        )
        stack.push_async_callback(changes.stop)
        escalations = EscalationRepository(database, event_log)
        status = LiveStatus(
            cache=cache,
            changes=changes,
            jobs=jobs,
            ledger=ledger,
            event_log=event_log,
            clock=clock,
        )
        stopping = asyncio.Event()
        hub = EventHub(
            redis_url,
            clock,
            ring_capacity=settings.watch_buffer_events,
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
            stopping=stopping,
        )
        await hub.start()
        stack.push_async_callback(hub.stop)
        job_feed = JobEventFeed(event_log, status, hub, clock, convert.encode_job_event)
        escalation_feed = EscalationFeed(event_log, jobs, hub, clock, encode=convert.encode_escalation_event)
        submissions = SubmissionWriter(jobs, changes, clock)
        submissions.start()
        # Stops after the server (the stack unwinds in reverse): every accepted call is answered.
        stack.push_async_callback(submissions.stop)
        job_service = JobService(jobs, RunRepository(database, event_log), changes, clock, submissions)
        escalation_service = EscalationService(escalations, changes, clock)

        server = grpc.aio.server(options=_server_options(settings), interceptors=[observed.observer])
        server.add_generic_rpc_handlers(
            (
                service_handler(
                    AGENT_CONTROL,
                    AgentControlApi(
                        job_service,
                        status,
                        job_feed,
                        registry,
                        _fleet_feed(stack, hub, clock, database=database, ledger=ledger, event_log=event_log),
                    ),
                    security.gate,
                ),
                service_handler(
                    ESCALATIONS, EscalationApi(escalation_service, escalation_feed), security.gate
                ),
            )
        )
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
        )
        probes: dict[str, Callable[[], Awaitable[object]]] = {
            "redis": live.ping,
            "sql": database.ping,
            "sql writes": database.check_writes,
        }
        monitor = HealthMonitor(
            health_servicer, SERVICE_NAMES, probes, settings.health_check_interval_seconds
        )
        await monitor.check_once()

        try:
            port = security.bind(server, settings.listen)
        except RuntimeError as error:
            raise SystemExit(f"cannot listen on {settings.listen}: {error}") from error
        await server.start()
        stack.push_async_callback(server.stop, None)
        monitor.start()
        # Every process fires escalation deadlines (the earliest one, on a timer); a deadline
        # fires once whichever process gets there first.
        deadlines = DeadlineTimer(escalations, changes, clock)
        deadlines.start()
        stack.push_async_callback(deadlines.stop)

        executor: Executor | None = None
        if settings.executor_enabled:
            executor = await _start_executor(
                settings,
                clock,
                stack,
                database=database,
                event_log=event_log,
                ledger=ledger,
                changes=changes,
                live=live,
                prices=prices,
                registry=registry,
                escalations=escalations,
                deadlines=deadlines,
            )
        await observed.serve_metrics(
            settings.metrics_listen,
            stack,
            count_jobs=lambda: count_jobs(database, clock.now()),
            executor=lambda: (
                None
                if executor is None
                else ExecutorGauges(
                    executor.awake, executor.parked, executor.slots.used, executor.slots.budget
                )
            ),
        )
        log.info(
            "cofounder-server listening on %s (port %d); Redis %s; SQL %s",
            settings.listen,
            port,
            _redacted(redis_url),
            _redacted(database_url),
        )
        security.log_start(settings)
        return cls(
            settings=settings,
            clock=clock,
            port=port,
            redis_url=redis_url,
            database_url=database_url,
            health_monitor=monitor,
            security=security,
            database=database,
            _server=server,
            _cleanup=stack,
            stopping=stopping,
            event_log=event_log,
            changes=changes,
            escalation_feed=escalation_feed,
            event_hub=hub,
            executor=executor,
            metrics_port=observed.metrics_port,
        )

    async def stop(self, grace_seconds: float | None = None, *, pause_seconds: float = 0.0) -> None:
        """Drain, then stop: health NOT_SERVING at once; ``pause_seconds`` (on the app's clock)
        of serving on while load balancers and client-side health checks notice; open streams
        ended with a status clients resume from (``UNAVAILABLE``, ``SERVER_SHUTTING_DOWN``,
        ``last_sequence``); in-flight calls given ``grace_seconds`` (default
        ``--shutdown-grace-seconds``) to complete; then the executor, Redis and SQL stop."""
        if self.stopping.is_set() or self._draining:
            return
        self._draining = True
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        await self.health_monitor.stop()
        if pause_seconds > 0:
            log.info("draining: health NOT_SERVING; still serving for %.1f s", pause_seconds)
            await self.clock.sleep_until(self.clock.now() + timedelta(seconds=pause_seconds))
        log.info("shutting down: streams ended, in-flight calls finish within %.1f s", grace)
        self.stopping.set()
        await self._server.stop(grace)
        await self._cleanup.aclose()
        log.info("stopped")
