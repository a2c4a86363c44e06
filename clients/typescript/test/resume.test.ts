// followJobEvents across a server restart: the iteration goes on by itself after the server
// drains (SIGTERM) or dies (SIGKILL) and comes back on the same port and data, and yields
// every event of the job once, in order.
import assert from "node:assert/strict";
import { after, before, it } from "node:test";
import { AgentState, CofounderClient, JobStatus, type JobEvent } from "@cofounder/client";
import { askingAgent, eventually, TestServer } from "./support/server.js";

async function resolveWhenWaiting(client: CofounderClient, jobId: string): Promise<void> {
  const status = await eventually(
    () => client.getJobStatus(jobId),
    (s) => s.agentState === AgentState.WAITING_FOR_INPUT && s.pendingEscalationIds.length === 1,
  );
  await client.resolveEscalation(status.pendingEscalationIds[0]!, { decision: "yes" });
}

function assertWholeHistory(seen: JobEvent[]): bigint[] {
  const sequences = seen.map((e) => e.sequence);
  assert.deepEqual(
    sequences,
    sequences.map((_, i) => BigInt(i + 1)),
    "every event once, in order, from 1",
  );
  const last = seen.at(-1);
  assert.equal(last?.payload.case === "jobStatusChanged" ? last.payload.value.status : undefined, JobStatus.READY);
  return sequences;
}

let server: TestServer;
let client: CofounderClient;

before(async () => {
  server = await TestServer.start();
  client = server.client();
});

after(async () => {
  client?.close();
  await server?.dispose();
});

async function historyOf(jobId: string): Promise<bigint[]> {
  const sequences: bigint[] = [];
  for await (const message of client.watchJobEvents(jobId, { afterSequence: 0 })) {
    if (message.kind.case === "events") sequences.push(...message.kind.value.events.map((e) => e.sequence));
  }
  return sequences;
}

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  it(`resumes after the last sequence when the server restarts (${signal})`, async () => {
    const job = await client.submitJob({
      projectId: "resume",
      goal: "ask, then finish",
      dailyBudgetMicrodollars: 5_000_000,
      agent: askingAgent(),
    });
    const seen: JobEvent[] = [];
    let restarted = false;
    // Fast reconnects: the server is down for a few seconds at most.
    for await (const event of client.followJobEvents(job.jobId, {
      afterSequence: 0,
      initialBackoffMs: 100,
      maxBackoffMs: 1_000,
      maxReconnects: 120,
    })) {
      seen.push(event);
      if (event.type === "agent.waiting_for_input" && !restarted) {
        // The agent now waits for a person: no event comes until the escalation is resolved,
        // which happens only on the restarted server.
        restarted = true;
        await server.stop(signal);
        await server.start();
        await resolveWhenWaiting(client, job.jobId);
      }
    }
    assert.ok(restarted, "the job asked a person before it finished");
    const sequences = assertWholeHistory(seen);
    const types = seen.map((e) => e.type);
    assert.ok(types.indexOf("agent.escalation_resolved") > types.indexOf("agent.waiting_for_input"));
    // The stored history is exactly what the follower yielded.
    assert.deepEqual(await historyOf(job.jobId), sequences);
  });
}

it("resumes a stream that went quiet for idleTimeoutMs", async () => {
  let watches = 0;
  const counting = server.client("alice", {
    interceptors: [
      (next) => (request) => {
        if (request.method.name === "WatchJobEvents") watches += 1;
        return next(request);
      },
    ],
  });
  try {
    const job = await counting.submitJob({ projectId: "idle", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    const seen: JobEvent[] = [];
    let resolving: Promise<void> | undefined;
    // The server's heartbeats come every 15 s: waiting for a person, the stream is silent
    // for longer than 300 ms again and again, and is replaced each time.
    for await (const event of counting.followJobEvents(job.jobId, { afterSequence: 0, idleTimeoutMs: 300, maxReconnects: 1 })) {
      seen.push(event);
      if (event.type === "agent.waiting_for_input") {
        resolving = (async () => {
          await eventually(
            async () => watches,
            (n) => n >= 4,
          );
          await resolveWhenWaiting(counting, job.jobId);
        })();
      }
    }
    await resolving;
    assert.ok(watches >= 4, `the quiet stream was replaced (${watches} watches)`);
    assertWholeHistory(seen);
  } finally {
    counting.close();
  }
});
