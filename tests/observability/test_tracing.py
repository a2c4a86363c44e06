"""OpenTelemetry spans of RPCs, agent iterations and model calls, with the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.observability.otel import OtelTracer
from tests.executor.conftest import registry_for
from tests.executor.support import finished, narrate, turn
from tests.support import RPC_TIMEOUT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


async def test_rpcs_iterations_and_model_calls_are_spans_under_the_callers_trace(
    executor_settings, manual_clock, gate, project_id
) -> None:
    exporter = InMemorySpanExporter()
    settings = executor_settings()
    app = await Application.start(
        settings,
        clock=manual_clock,
        plugins=registry_for(settings, gate),
        tracer=OtelTracer(exporter, batch=False),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            traced = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),)
            config = struct_pb2.Struct()
            config.update({"turns": [turn("plan", [narrate("drafting")]), turn("done")]})
            request = pb.SubmitJobRequest(
                project_id=project_id,
                goal="Ship it",
                daily_budget_microdollars=10**9,
                agent=job_pb2.AgentSpec(brain="scripted", model="m", config=config),
            )
            # The client's own span is the parent of the server's.
            job = (await stub.SubmitJob(request, metadata=traced, timeout=RPC_TIMEOUT)).job
            await finished(stub, job.job_id)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetJob(pb.GetJobRequest(job_id="not-a-uuid"), timeout=RPC_TIMEOUT)
    finally:
        await app.stop(grace_seconds=1.0)

    spans = exporter.get_finished_spans()
    submitted = [s for s in spans if s.name == "cofounder.agent.v1.AgentControlService/SubmitJob"]
    assert len(submitted) == 1
    rpc = submitted[0]
    assert rpc.kind is SpanKind.SERVER
    assert format(rpc.context.trace_id, "032x") == TRACE_ID
    assert rpc.parent is not None
    assert format(rpc.parent.span_id, "016x") == PARENT_SPAN_ID
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    refused = [s for s in spans if s.name.endswith("/GetJob") and s.attributes["rpc.grpc.status_code"] != 0]
    assert [s.attributes["rpc.grpc.status_code"] for s in refused] == [
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    ]

    iterations = [s for s in spans if s.name == "executor.iteration"]
    assert sorted(s.attributes["cofounder.iteration"] for s in iterations) == [1, 2]
    assert {s.attributes["cofounder.job_id"] for s in iterations} == {job.job_id}
    calls = [s for s in spans if s.name == "model.call"]
    assert len(calls) == 2
    iteration_ids = {s.context.span_id for s in iterations}
    assert all(call.parent is not None and call.parent.span_id in iteration_ids for call in calls)


def test_tracing_off_loads_no_tracing_code() -> None:
    # redis-py imports the OpenTelemetry API for instrumentation of its own when it is
    # installed; what must stay unloaded is this server's tracing and the SDK's tracer.
    probe = (
        "import sys, cofounder_server.app, cofounder_server.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'cofounder_server.observability.otel', 'opentelemetry.sdk.trace'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
