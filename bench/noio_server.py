"""Reference ceiling: a grpc.aio server answering GetJobStatus with a constant, doing no I/O.

It serves the real ``AgentControlService/GetJobStatus`` method name and messages, so h2load
sends it byte-for-byte the same request as the real server, and the only thing missing is the
work behind the call. Its throughput is what the grpc.aio stack
itself allows on one core; the real server can approach it but not pass it.

Run: ``python -m bench.noio_server --listen 127.0.0.1:PORT --job-id UUID`` (from the repo root).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2

SERVICE = "cofounder.agent.v1.AgentControlService"


def constant_response(job_id: str) -> pb.GetJobStatusResponse:
    """A snapshot shaped like the real server's answer for the benchmark's job.

    Same fields as a queued job whose agent is working at 42 % of its budget, so the wire size
    (and protobuf serialisation cost) matches the real server's answer within a few bytes.
    """
    return pb.GetJobStatusResponse(
        status=job_pb2.JobStatusSnapshot(
            job_id=job_id,
            job_status=job_pb2.JOB_STATUS_QUEUED,
            agent_state=job_pb2.AGENT_STATE_WORKING,
            budget_percent=42,
            daily_budget_microdollars=10_000_000,
        )
    )


def constant_handler(response: pb.GetJobStatusResponse) -> grpc.GenericRpcHandler[Any, Any]:
    """GetJobStatus answered by one prebuilt message; every other method is UNIMPLEMENTED.

    The request is still parsed and the response still serialised on every call, by grpcio's
    (de)serializer hooks, as for any grpc.aio service.
    """

    async def get_job_status(
        request: pb.GetJobStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetJobStatusResponse:
        return response

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetJobStatus": grpc.unary_unary_rpc_method_handler(
                get_job_status,
                request_deserializer=pb.GetJobStatusRequest.FromString,
                response_serializer=pb.GetJobStatusResponse.SerializeToString,
            )
        },
    )


async def serve(listen: str, job_id: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    # so_reuseport 0: a stale server from an earlier run must make this one fail loudly instead
    # of silently sharing the port (grpcio defaults it to 1). Same choice as cofounder-server.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((constant_handler(constant_response(job_id)),))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Parse flags and serve on uvloop when it is installed, as cofounder-server does."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--job-id", required=True, help="job id placed in the constant snapshot")
    args = parser.parse_args()
    # The real server runs on uvloop (cofounder_server.cli); the ceiling must use the same loop,
    # or the comparison measures the event loop rather than the server's own work.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, args.job_id))
    else:
        uvloop.run(serve(args.listen, args.job_id))


if __name__ == "__main__":
    main()
