// TLS and mutual TLS against the real server, with certificates of a throw-away CA (made by
// trustme from the repository's venv).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { tlsFromFiles, type CofounderClient } from "@cofounder/client";
import { rejection } from "./support/errors.js";
import { serverCommand, TestServer } from "./support/server.js";

const SERVER_NAME = "cofounder.test";
let pem: string;

before(() => {
  pem = mkdtempSync(join(tmpdir(), "cofounder-ts-tls-"));
  // The server certificate names only SERVER_NAME, not 127.0.0.1, so connecting by address
  // verifies only with serverName.
  const script = `
import sys, trustme
out = sys.argv[1]
ca = trustme.CA()
ca.cert_pem.write_to_path(out + "/ca.pem")
server = ca.issue_cert("${SERVER_NAME}")
server.cert_chain_pems[0].write_to_path(out + "/server.pem")
server.private_key_pem.write_to_path(out + "/server.key")
client = ca.issue_cert("reporting.internal", common_name="reporting.internal")
client.cert_chain_pems[0].write_to_path(out + "/client.pem")
client.private_key_pem.write_to_path(out + "/client.key")
`;
  execFileSync(join(dirname(serverCommand()), "python"), ["-c", script, pem]);
});

after(() => rmSync(pem, { recursive: true, force: true }));

async function using<T>(client: CofounderClient, body: (client: CofounderClient) => Promise<T>): Promise<T> {
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

describe("TLS", () => {
  let server: TestServer;

  before(async () => {
    server = await TestServer.start({
      args: ["--tls-cert-file", join(pem, "server.pem"), "--tls-key-file", join(pem, "server.key")],
      clientOptions: { tls: tlsFromFiles({ caFile: join(pem, "ca.pem"), serverName: SERVER_NAME }) },
    });
  });

  after(async () => server?.dispose());

  it("verifies the server against the given CA and the certificate's name", async () => {
    const page = await using(server.client(), (client) => client.listJobs());
    assert.deepEqual(page.jobs, []);
  });

  it("refuses a server whose certificate does not name the target", async () => {
    const tls = { ca: readFileSync(join(pem, "ca.pem")) };
    const error = await rejection(using(server.client("alice", { tls, retries: 0 }), (client) => client.listJobs()));
    assert.equal(error.code, "UNAVAILABLE");
  });

  it("refuses a server signed by a CA it does not trust", async () => {
    const tls = { serverName: SERVER_NAME };
    const error = await rejection(using(server.client("alice", { tls, retries: 0 }), (client) => client.listJobs()));
    assert.equal(error.code, "UNAVAILABLE");
  });
});

describe("mutual TLS", () => {
  let server: TestServer;
  const ca = (): string => join(pem, "ca.pem");

  before(async () => {
    server = await TestServer.start({
      args: [
        "--tls-cert-file",
        join(pem, "server.pem"),
        "--tls-key-file",
        join(pem, "server.key"),
        "--tls-client-ca-file",
        ca(),
      ],
      certificates: [["reporting.internal", "reporting", "user"]],
      clientOptions: {
        tls: tlsFromFiles({
          caFile: ca(),
          certFile: join(pem, "client.pem"),
          keyFile: join(pem, "client.key"),
          serverName: SERVER_NAME,
        }),
      },
    });
  });

  after(async () => server?.dispose());

  it("calls as the principal its client certificate is mapped to, without a token", async () => {
    const client = server.client("alice", { token: "" });
    const job = await using(client, (c) =>
      c.submitJob({ projectId: "mtls", goal: "g", dailyBudgetMicrodollars: 1, agent: { brain: "scripted", config: { turns: [{ text: "done" }] } } }),
    );
    assert.equal(job.ownerId, "reporting");
  });

  it("is refused without a client certificate", async () => {
    const tls = tlsFromFiles({ caFile: ca(), serverName: SERVER_NAME });
    const error = await rejection(using(server.client("alice", { tls, retries: 0 }), (client) => client.listJobs()));
    assert.equal(error.code, "UNAVAILABLE");
  });

  it("rejects a certificate without its key", () => {
    assert.throws(() => server.client("alice", { tls: { ca: readFileSync(ca()), cert: readFileSync(join(pem, "client.pem")) } }), TypeError);
  });
});
