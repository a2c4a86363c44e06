"""SQL outage: health goes NOT_SERVING and calls answer UNAVAILABLE, then both recover.

The server reaches PostgreSQL through a loopback TCP proxy that the test cuts and restores,
so the real database keeps running for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.app import Application
from tests.support import RPC_TIMEOUT, eventually

pytestmark = pytest.mark.external


class TcpProxy:
    """Forwards loopback connections to ``target``; ``cut()`` drops them all and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._copy(reader, upstream_writer))
                group.create_task(self._copy(upstream_reader, writer))
        except (OSError, asyncio.CancelledError, ExceptionGroup):
            pass
        finally:
            writer.close()
            self._pipes.discard(task)

    @staticmethod
    async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(OSError):
                sink.close()


async def test_sql_outage_is_not_serving_and_unavailable_then_recovers(settings_for, database_url) -> None:
    if not database_url:
        pytest.skip("needs COFOUNDER_TEST_DATABASE_URL (PostgreSQL) to cut the connection to")
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = await Application.start(settings_for(database_url=proxied))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            jobs = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)

            async def overall() -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)).status)

            async def list_code() -> grpc.StatusCode:
                try:
                    await jobs.ListJobs(pb.ListJobsRequest(), timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            assert await overall() == health_pb2.HealthCheckResponse.SERVING
            await proxy.cut()

            await eventually(overall, lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING)
            assert await list_code() == grpc.StatusCode.UNAVAILABLE

            await proxy.start()
            await eventually(overall, lambda s: s == health_pb2.HealthCheckResponse.SERVING)
            await eventually(list_code, lambda code: code == grpc.StatusCode.OK)
    finally:
        await app.stop(grace_seconds=1.0)
        await proxy.cut()
