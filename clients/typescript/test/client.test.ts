// Every RPC of the client against a real server: calls, errors with their details,
// deadlines and cancellation of streams, escalations, the fleet feed.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  AgentState,
  CofounderClient,
  CofounderError,
  EscalationEventKind,
  EscalationStatus,
  JobChangeKind,
  JobStatus,
  type FleetUpdate,
  type JobEvent,
} from "@cofounder/client";
import { rejection } from "./support/errors.js";
import { askingAgent, eventually, quickAgent, TestServer } from "./support/server.js";

const MAX_STREAMS = 2;
let server: TestServer;
let client: CofounderClient;

before(async () => {
  server = await TestServer.start({
    args: ["--rate-limit-per-second", "0", "--max-streams-per-principal", String(MAX_STREAMS)],
  });
  client = server.client();
});

after(async () => {
  client?.close();
  await server?.dispose();
});

async function waitingForInput(jobId: string): Promise<void> {
  await eventually(
    () => client.getJobStatus(jobId),
    (status) => status.agentState === AgentState.WAITING_FOR_INPUT && status.pendingEscalationIds.length === 1,
  );
}

describe("jobs", () => {
  it("submits, reads, lists and cancels a job", async () => {
    const project = `p-${Date.now()}`;
    const job = await client.submitJob({
      projectId: project,
      goal: "Ship the landing page",
      dailyBudgetMicrodollars: 5_000_000,
      agent: askingAgent(),
      labels: { team: "growth" },
    });
    assert.equal(job.projectId, project);
    assert.equal(job.dailyBudgetMicrodollars, 5_000_000n);
    assert.equal(job.labels.team, "growth");
    // The agent config is a plain JSON object both ways (google.protobuf.Struct).
    assert.deepEqual(job.agent?.config, askingAgent().config);

    const read = await client.getJob(job.jobId);
    assert.equal(read.jobId, job.jobId);
    assert.equal(read.goal, "Ship the landing page");

    const page = await client.listJobs({ projectId: project });
    assert.deepEqual(
      page.jobs.map((j) => j.jobId),
      [job.jobId],
    );
    assert.equal(page.nextPageToken, "");

    await waitingForInput(job.jobId);
    const cancelled = await client.cancelJob(job.jobId, { reason: "superseded" });
    assert.equal(cancelled.status, JobStatus.CANCELLED);
    assert.equal(cancelled.outcomeDetail, "superseded");
    // Idempotent: cancelling a cancelled job returns it unchanged.
    assert.equal((await client.cancelJob(job.jobId)).status, JobStatus.CANCELLED);
    const status = await client.getJobStatus(job.jobId);
    assert.equal(status.jobStatus, JobStatus.CANCELLED);
    const listedCancelled = await client.listJobs({ projectId: project, statuses: [JobStatus.CANCELLED] });
    assert.equal(listedCancelled.jobs.length, 1);
  });

  it("pages through every job with iterJobs", async () => {
    const project = `iter-${Date.now()}`;
    const ids = [];
    for (let i = 0; i < 3; i += 1) {
      ids.push(
        (await client.submitJob({ projectId: project, goal: `g${i}`, dailyBudgetMicrodollars: 1_000, agent: quickAgent() }))
          .jobId,
      );
    }
    const seen = [];
    for await (const job of client.iterJobs({ projectId: project, pageSize: 2 })) seen.push(job.jobId);
    assert.deepEqual(seen, ids.reverse());
  });

  it("makes a submit with the same requestId idempotent", async () => {
    const input = {
      projectId: "idem",
      goal: "once",
      dailyBudgetMicrodollars: 1_000n,
      agent: quickAgent(),
      requestId: `req-${Date.now()}`,
    };
    const first = await client.submitJob(input);
    const again = await client.submitJob(input);
    assert.equal(again.jobId, first.jobId);
    const conflict = await rejection(client.submitJob({ ...input, goal: "something else" }));
    assert.equal(conflict.code, "ALREADY_EXISTS");
  });

  it("refuses to wake an agent that is not sleeping", async () => {
    const job = await client.submitJob({ projectId: "wake", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    await waitingForInput(job.jobId);
    const error = await rejection(client.wakeAgent(job.jobId, { topUpMicrodollars: 1_000 }));
    assert.equal(error.code, "FAILED_PRECONDITION");
    await client.cancelJob(job.jobId);
  });
});

describe("errors", () => {
  it("reports invalid input as INVALID_ARGUMENT with field violations", async () => {
    const error = await rejection(
      client.submitJob({ projectId: "not a valid id!", goal: "", dailyBudgetMicrodollars: 0, agent: quickAgent() }),
    );
    assert.equal(error.code, "INVALID_ARGUMENT");
    assert.equal(error.grpcCode, 3);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["project_id", "goal", "daily_budget_microdollars"],
    );
    assert.match(error.fieldViolations[0]?.description ?? "", /A-Za-z0-9/);
    assert.equal(error.details.errorInfo?.domain, "cofounder.dev");
    assert.equal(error.retryable, false);
    assert.match(error.message, /^INVALID_ARGUMENT: /);
  });

  it("reports an invalid agent config with the field inside the config", async () => {
    const error = await rejection(
      client.submitJob({
        projectId: "p",
        goal: "g",
        dailyBudgetMicrodollars: 1,
        agent: { brain: "scripted", config: { turns: "oops" } },
      }),
    );
    assert.equal(error.code, "INVALID_ARGUMENT");
    assert.deepEqual(error.fieldViolations, [{ field: "agent.config.turns", description: "must be a list" }]);
  });

  it("reports a missing job as NOT_FOUND with its reason and resource", async () => {
    const missing = "00000000-0000-4000-8000-000000000000";
    const error = await rejection(client.getJob(missing));
    assert.equal(error.code, "NOT_FOUND");
    assert.equal(error.reason, "JOB_NOT_FOUND");
    assert.equal(error.details.resourceInfo?.resourceName, missing);
  });

  it("hides another tenant's job exactly like a missing one", async () => {
    const job = await client.submitJob({ projectId: "mine", goal: "g", dailyBudgetMicrodollars: 1, agent: quickAgent() });
    const bob = server.client("bob");
    try {
      const error = await rejection(bob.getJob(job.jobId));
      assert.equal(error.code, "NOT_FOUND");
      assert.equal(error.reason, "JOB_NOT_FOUND");
    } finally {
      bob.close();
    }
  });

  it("reports missing and unknown credentials as UNAUTHENTICATED", async () => {
    const anonymous = new CofounderClient({ target: server.target });
    const stranger = new CofounderClient({ target: server.target, token: "x".repeat(43) });
    try {
      const missing = await rejection(anonymous.listJobs());
      assert.equal(missing.code, "UNAUTHENTICATED");
      assert.equal(missing.reason, "CREDENTIALS_MISSING");
      const unknown = await rejection(stranger.listJobs());
      assert.equal(unknown.reason, "CREDENTIALS_UNKNOWN");
    } finally {
      anonymous.close();
      stranger.close();
    }
  });

  it("reports a watch cursor beyond the newest event as INVALID_ARGUMENT", async () => {
    const job = await client.submitJob({ projectId: "cursor", goal: "g", dailyBudgetMicrodollars: 1, agent: quickAgent() });
    const error = await rejection(
      (async () => {
        for await (const message of client.watchJobEvents(job.jobId, { afterSequence: 1_000_000 })) void message;
      })(),
    );
    assert.equal(error.code, "INVALID_ARGUMENT");
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["after_sequence"],
    );
  });
});

describe("deadlines and cancellation of streams", () => {
  it("ends a stream that outlives its deadline with DEADLINE_EXCEEDED", async () => {
    const job = await client.submitJob({ projectId: "dl", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    await waitingForInput(job.jobId);
    let messages = 0;
    const error = await rejection(
      (async () => {
        for await (const message of client.watchJobEvents(job.jobId, { afterSequence: 0, timeoutMs: 500 })) {
          void message;
          messages += 1;
        }
      })(),
    );
    assert.equal(error.code, "DEADLINE_EXCEEDED");
    assert.ok(messages >= 2, "the snapshot and the history arrived before the deadline");
    await client.cancelJob(job.jobId);
  });

  it("ends a follow with CANCELLED when its signal aborts", async () => {
    const job = await client.submitJob({ projectId: "abort", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    await waitingForInput(job.jobId);
    const controller = new AbortController();
    const seen: JobEvent[] = [];
    const error = await rejection(
      (async () => {
        for await (const event of client.followJobEvents(job.jobId, { afterSequence: 0, signal: controller.signal })) {
          seen.push(event);
          if (event.type === "agent.waiting_for_input") controller.abort();
        }
      })(),
    );
    assert.equal(error.code, "CANCELLED");
    assert.equal(seen.at(-1)?.type, "agent.waiting_for_input");
    await client.cancelJob(job.jobId);
  });

  it("cancels the RPC when the loop breaks", async () => {
    // This server allows a principal MAX_STREAMS open streams: were the broken-off streams
    // left open on the server, the later ones would be refused for good.
    const job = await client.submitJob({ projectId: "brk", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    await waitingForInput(job.jobId);
    const firstMessage = async (): Promise<string | undefined> => {
      try {
        for await (const message of client.watchJobEvents(job.jobId)) return message.kind.case;
      } catch (error) {
        // The server releases a cancelled stream's slot a moment after the cancellation.
        if (error instanceof CofounderError && error.reason === "TOO_MANY_STREAMS") return error.reason;
        throw error;
      }
      return undefined;
    };
    for (let i = 0; i < MAX_STREAMS * 3; i += 1) {
      assert.equal(await eventually(firstMessage, (kind) => kind !== "TOO_MANY_STREAMS"), "snapshot");
    }
    await client.cancelJob(job.jobId);
  });
});

describe("escalations", () => {
  it("lists, reads and resolves an escalation; the job then finishes", async () => {
    const job = await client.submitJob({ projectId: "esc", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    await waitingForInput(job.jobId);
    const page = await client.listEscalations({ jobId: job.jobId, statuses: [EscalationStatus.PENDING] });
    assert.equal(page.escalations.length, 1);
    const pending = page.escalations[0]!;
    assert.equal(pending.problem, "Ship it?");
    assert.deepEqual(
      pending.options.map((o) => o.value),
      ["yes", "no"],
    );
    assert.equal((await client.getEscalation(pending.escalationId)).jobId, job.jobId);

    const wrong = await rejection(client.resolveEscalation(pending.escalationId, { decision: "maybe" }));
    assert.equal(wrong.code, "INVALID_ARGUMENT");
    assert.ok(wrong.fieldViolations.some((v) => v.field === "decision"));

    const resolution = await client.resolveEscalation(pending.escalationId, { decision: "yes", guidance: "go" });
    assert.equal(resolution.escalation.status, EscalationStatus.RESOLVED);
    assert.equal(resolution.agentWaiting, true);
    assert.equal(resolution.agentWakeTime, undefined);

    const again = await rejection(client.resolveEscalation(pending.escalationId, { decision: "no" }));
    assert.equal(again.code, "FAILED_PRECONDITION");
    assert.equal(again.reason, "ESCALATION_ALREADY_RESOLVED");

    const types = [];
    for await (const event of client.followJobEvents(job.jobId, { afterSequence: 0 })) types.push(event.type);
    assert.equal(types.at(-1), "job.status_changed");
    assert.ok(types.includes("agent.escalation_resolved"));
    assert.equal((await client.getJob(job.jobId)).status, JobStatus.READY);
    const all = [];
    for await (const escalation of client.iterEscalations({ jobId: job.jobId, pageSize: 1 })) all.push(escalation);
    assert.equal(all.length, 1);
  });

  it("answers a question without options with free text", async () => {
    const agent = askingAgent();
    const turns = (agent.config as { turns: { tool_calls?: { input: Record<string, unknown> }[] }[] }).turns;
    turns[0]!.tool_calls![0]!.input = { question: "Name the release?", max_answer_chars: 20 };
    const job = await client.submitJob({ projectId: "open", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent });
    await waitingForInput(job.jobId);
    const pending = (await client.listEscalations({ jobId: job.jobId, statuses: [EscalationStatus.PENDING] }))
      .escalations[0]!;
    assert.equal(pending.options.length, 0);

    const tooLong = await rejection(client.resolveEscalation(pending.escalationId, { answer: "x".repeat(21) }));
    assert.equal(tooLong.code, "INVALID_ARGUMENT");
    assert.ok(tooLong.fieldViolations.some((v) => v.field === "answer"));

    const resolution = await client.resolveEscalation(pending.escalationId, { answer: "v2" });
    assert.equal(resolution.escalation.status, EscalationStatus.RESOLVED);
    assert.equal((await client.getEscalation(pending.escalationId)).status, EscalationStatus.RESOLVED);
  });

  it("streams the pending escalations, then new ones", async () => {
    const controller = new AbortController();
    const kinds: string[] = [];
    let job: string | undefined;
    for await (const message of client.watchEscalations({ signal: controller.signal })) {
      kinds.push(message.kind.case ?? "none");
      if (message.kind.case === "snapshot") {
        job = (await client.submitJob({ projectId: "wesc", goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() }))
          .jobId;
      } else if (message.kind.case === "events") {
        const raised = message.kind.value.events.find((e) => e.escalation?.jobId === job);
        if (raised !== undefined) {
          assert.equal(raised.type, "agent.escalation_raised");
          assert.equal(raised.kind, EscalationEventKind.RAISED);
          break;
        }
      }
    }
    assert.equal(kinds[0], "snapshot");
    await client.cancelJob(job!);
  });
});

describe("fleet feed", () => {
  it("follows a project's jobs: snapshot, then each change", async () => {
    const project = `fleet-${Date.now()}`;
    const existing = await client.submitJob({ projectId: project, goal: "g", dailyBudgetMicrodollars: 5_000_000, agent: askingAgent() });
    // Parked waiting for a person, the job changes no more while the view is followed.
    await waitingForInput(existing.jobId);
    const controller = new AbortController();
    const updates: FleetUpdate[] = [];
    let added: string | undefined;
    const done = (async () => {
      for await (const update of client.followJobs({ projectId: project, signal: controller.signal })) {
        updates.push(update);
        if (update.kind === "snapshot") {
          added = (await client.submitJob({ projectId: project, goal: "g2", dailyBudgetMicrodollars: 1, agent: quickAgent() }))
            .jobId;
        } else if (update.change.status?.jobId === added && update.change.status?.jobStatus === JobStatus.READY) {
          controller.abort();
        }
      }
    })();
    const error = await rejection(done);
    assert.equal(error.code, "CANCELLED");
    const snapshot = updates[0];
    assert.ok(snapshot?.kind === "snapshot");
    assert.deepEqual(
      snapshot.statuses.map((s) => s.jobId),
      [existing.jobId],
    );
    const changes = updates.slice(1).flatMap((u) => (u.kind === "change" ? [u.change] : []));
    assert.ok(changes.every((c) => c.status?.jobId === added));
    assert.equal(changes[0]?.kind, JobChangeKind.ENTERED);
    assert.equal(changes.at(-1)?.kind, JobChangeKind.UPDATED);
    const sequences = changes.map((c) => c.sequence);
    assert.deepEqual(sequences, [...sequences].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    assert.ok(sequences[0]! > snapshot.sequence);
    await client.cancelJob(existing.jobId);
  });
});

