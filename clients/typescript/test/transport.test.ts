// Deadlines, cancellation and retries of unary calls, against endpoints that never answer
// or refuse connections: no server needed.
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { CofounderClient } from "@cofounder/client";
import { rejection } from "./support/errors.js";
import { freePort } from "./support/server.js";

// Accepts TCP connections and never says a word: every call to it hangs until its deadline.
let silent: Server;
let silentTarget: string;
const sockets = new Set<Socket>();

before(async () => {
  silent = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((done) => silent.listen(0, "127.0.0.1", done));
  const address = silent.address();
  silentTarget = `127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`;
});

after(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((done) => silent.close(done));
});

describe("deadlines", () => {
  it("fails a call with DEADLINE_EXCEEDED after its timeoutMs", async () => {
    const client = new CofounderClient({ target: silentTarget, timeoutMs: 60_000 });
    try {
      const started = Date.now();
      const error = await rejection(client.getJob("00000000-0000-4000-8000-000000000000", { timeoutMs: 300 }));
      assert.equal(error.code, "DEADLINE_EXCEEDED");
      assert.equal(error.retryable, true);
      assert.ok(Date.now() - started < 30_000);
    } finally {
      client.close();
    }
  });

  it("applies the client's default deadline to unary calls", async () => {
    const client = new CofounderClient({ target: silentTarget, timeoutMs: 300 });
    try {
      assert.equal((await rejection(client.listJobs())).code, "DEADLINE_EXCEEDED");
    } finally {
      client.close();
    }
  });

  it("throws a RangeError, before any call, for an amount that is not an integer", async () => {
    const client = new CofounderClient({ target: silentTarget, timeoutMs: 300 });
    try {
      await assert.rejects(
        client.submitJob({ projectId: "p", goal: "g", dailyBudgetMicrodollars: 1.5, agent: { brain: "scripted" } }),
        RangeError,
      );
    } finally {
      client.close();
    }
  });

  it("rejects a timeoutMs that is not positive", () => {
    assert.throws(() => new CofounderClient({ timeoutMs: 0 }), RangeError);
    assert.throws(() => new CofounderClient({ retries: 5 }), RangeError);
  });
});

describe("cancellation", () => {
  it("fails a call with CANCELLED when its signal aborts", async () => {
    const client = new CofounderClient({ target: silentTarget, timeoutMs: null });
    try {
      const controller = new AbortController();
      const call = client.getJobStatus("00000000-0000-4000-8000-000000000000", { signal: controller.signal });
      setTimeout(() => controller.abort(), 200);
      const error = await rejection(call);
      assert.equal(error.code, "CANCELLED");
    } finally {
      client.close();
    }
  });

  it("fails at once with a signal that already aborted", async () => {
    const client = new CofounderClient({ target: silentTarget });
    try {
      const error = await rejection(client.listJobs({ signal: AbortSignal.abort() }));
      assert.equal(error.code, "CANCELLED");
    } finally {
      client.close();
    }
  });

  it("refuses calls after close()", async () => {
    const client = new CofounderClient({ target: silentTarget });
    client.close();
    await assert.rejects(client.listJobs(), /closed/);
  });
});

describe("retries", () => {
  it("retries UNAVAILABLE, then reports it", async () => {
    const port = await freePort(); // nothing listens there
    let attempts = 0;
    const client = new CofounderClient({
      target: `127.0.0.1:${port}`,
      retries: 2,
      interceptors: [
        (next) => (request) => {
          attempts += 1;
          return next(request);
        },
      ],
    });
    try {
      const error = await rejection(client.listJobs());
      assert.equal(error.code, "UNAVAILABLE");
      assert.equal(error.retryable, true);
      assert.equal(attempts, 3);
    } finally {
      client.close();
    }
  });

  it("sends the bearer token and the end user on every call", async () => {
    const seen: Array<[string | null, string | null]> = [];
    const client = new CofounderClient({
      target: silentTarget,
      token: "t0ken",
      onBehalfOf: "user-42",
      timeoutMs: 100,
      interceptors: [
        (next) => (request) => {
          seen.push([request.header.get("authorization"), request.header.get("cofounder-on-behalf-of")]);
          return next(request);
        },
      ],
    });
    try {
      await rejection(client.getJob("x"));
      assert.deepEqual(seen, [["Bearer t0ken", "user-42"]]);
    } finally {
      client.close();
    }
  });
});
