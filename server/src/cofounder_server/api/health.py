"""grpc.health.v1 status that follows what the server depends on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc

# The asyncio servicer is public as ``health.aio`` at runtime, but the type stubs only know
# the module that defines it.
from grpc_health.v1 import _async, health_pb2

from cofounder_server.causes import describe_cause

__all__ = ["HealthMonitor", "HealthServicer", "Probe"]

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(_async.HealthServicer):  # type: ignore[misc]  # untyped upstream module
    """grpcio's asyncio health servicer, with ``List`` answered from the statuses ``Check`` uses
    (grpcio 1.85 leaves it unimplemented)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthListResponse:
        """Every service with a status, including the server as a whole (``""``)."""
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )


class HealthMonitor:
    """Probes each dependency periodically; every service is SERVING only while all pass.

    The overall status (service name ``""``) and each named service report the same thing:
    every RPC of this server needs both Redis and SQL.
    """

    def __init__(
        self,
        servicer: HealthServicer,
        services: Sequence[str],
        probes: Mapping[str, Probe],
        interval_seconds: float,
        probe_timeout_seconds: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._services = ["", *services]
        self._probes = dict(probes)
        self._interval = interval_seconds
        self._timeout = probe_timeout_seconds
        self._task: asyncio.Task[None] | None = None
        self.failing: tuple[str, ...] = ()

    async def check_once(self) -> bool:
        """Run every probe now and publish the result; True when all passed."""
        results = await asyncio.gather(*(self._probe(name, p) for name, p in self._probes.items()))
        reasons = {name: reason for name, reason in zip(self._probes, results, strict=True) if reason}
        failing = tuple(reasons)
        if failing != self.failing:
            if failing:
                log.warning(
                    "health: NOT_SERVING, failing: %s",
                    "; ".join(f"{name} ({reason})" for name, reason in reasons.items()),
                )
            else:
                log.info("health: SERVING")
        self.failing = failing
        status = NOT_SERVING if failing else SERVING
        for service in self._services:
            await self._servicer.set(service, status)
        return not failing

    async def _probe(self, name: str, probe: Probe) -> str | None:
        """``None`` when the probe passed, else why it failed (one line)."""
        try:
            await asyncio.wait_for(probe(), self._timeout)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as error:  # any failure of a probe means "not working"
            log.debug("health probe %s failed: %r", name, error)
            return describe_cause(error)
        return None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    def start(self) -> None:
        """Keep probing in the background."""
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        """Stop probing and report NOT_SERVING for good (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._servicer.enter_graceful_shutdown()
