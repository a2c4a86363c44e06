// The CommonJS build: `require` gets the same client, error class and generated types.
const assert = require("node:assert/strict");
const { createServer } = require("node:net");
const { it } = require("node:test");
const client = require("@cofounder/client");

it("loads with require()", () => {
  assert.equal(typeof client.CofounderClient, "function");
  assert.equal(client.JobStatus.READY, 3);
  assert.equal(client.AgentControlServiceSchema === undefined, true);
  assert.equal(client.AgentControlService.typeName, "cofounder.agent.v1.AgentControlService");
});

it("reports a failed call as its CofounderError", async () => {
  const probe = createServer();
  await new Promise((done) => probe.listen(0, "127.0.0.1", done));
  const { port } = probe.address();
  await new Promise((done) => probe.close(done));
  const cofounder = new client.CofounderClient({ target: `127.0.0.1:${port}`, retries: 0 });
  try {
    await assert.rejects(cofounder.getJob("x"), (error) => {
      assert.ok(error instanceof client.CofounderError);
      assert.equal(error.code, "UNAVAILABLE");
      return true;
    });
  } finally {
    cofounder.close();
  }
});
