"""The health monitor reports NOT_SERVING while any dependency fails, and recovers."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from cofounder_server.api.health import HealthMonitor, HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(servicer: HealthServicer, service: str) -> int:
    response = await servicer.Check(health_pb2.HealthCheckRequest(service=service), None)  # type: ignore[arg-type]
    return int(response.status)


async def test_one_failing_dependency_makes_every_service_not_serving() -> None:
    servicer = HealthServicer()
    sql_up = True

    async def redis_probe() -> None:
        return None

    async def sql_probe() -> None:
        if not sql_up:
            raise ConnectionRefusedError("sql down")

    monitor = HealthMonitor(servicer, ["svc.A"], {"redis": redis_probe, "sql": sql_probe}, 60)

    assert await monitor.check_once()
    assert await status(servicer, "") == SERVING
    assert await status(servicer, "svc.A") == SERVING

    sql_up = False
    assert not await monitor.check_once()
    assert monitor.failing == ("sql",)
    assert await status(servicer, "") == NOT_SERVING
    assert await status(servicer, "svc.A") == NOT_SERVING

    sql_up = True
    assert await monitor.check_once()
    assert await status(servicer, "svc.A") == SERVING

    await monitor.stop()
    assert await status(servicer, "svc.A") == NOT_SERVING


async def test_a_hanging_probe_counts_as_down() -> None:
    import asyncio

    servicer = HealthServicer()

    async def hangs() -> None:
        await asyncio.Event().wait()

    monitor = HealthMonitor(servicer, [], {"redis": hangs}, 60, probe_timeout_seconds=0.05)
    assert not await monitor.check_once()
    assert await status(servicer, "") == NOT_SERVING
