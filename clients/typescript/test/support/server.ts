// A real cofounder-server process for the tests: the Python server of this repository, run
// from its virtual environment on a free loopback port and a temporary data directory.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { CofounderClient, CofounderError, type AgentSpecInput, type ClientOptions } from "@cofounder/client";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "..");

/** Deadline of anything the tests wait for: the machine may be loaded. */
export const WAIT_MS = 60_000;

/** A token of each test principal: two users, so tenancy can be checked. */
export interface Principals {
  alice: string;
  bob: string;
}

/** The server executable: `$COFOUNDER_SERVER`, else the repository venv's. */
export function serverCommand(): string {
  const command = process.env.COFOUNDER_SERVER ?? join(repoRoot, ".venv", "bin", "cofounder-server");
  if (!existsSync(command)) {
    throw new Error(`${command} not found: create the repository's venv (see README.md) or set COFOUNDER_SERVER`);
  }
  return command;
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

/** How to start a {@link TestServer}. */
export interface ServerOptions {
  /** More server flags. */
  args?: string[];
  /** `[common name, principal, role]` of client certificates the server maps (mutual TLS). */
  certificates?: Array<[string, string, string]>;
  /** Options of every client of this server ({@link TestServer.client}), e.g. its TLS settings. */
  clientOptions?: ClientOptions;
}

/** One server: a data directory and port that survive {@link stop} and {@link start}. */
export class TestServer {
  readonly dataDir: string;
  readonly principals: Principals;
  private process: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly logPath: string;
  private readonly tokensFile: string;

  private readonly extraArgs: string[];
  private readonly clientOptions: ClientOptions;

  private constructor(
    readonly port: number,
    options: ServerOptions,
  ) {
    this.extraArgs = options.args ?? [];
    this.clientOptions = options.clientOptions ?? {};
    this.dataDir = mkdtempSync(join(tmpdir(), "cofounder-ts-test-"));
    this.logPath = join(this.dataDir, "server.log");
    this.principals = { alice: randomBytes(32).toString("base64url"), bob: randomBytes(32).toString("base64url") };
    this.tokensFile = join(this.dataDir, "principals.toml");
    const entry = (token: string, principal: string): string =>
      `[[tokens]]\nsha256 = "${createHash("sha256").update(token).digest("hex")}"\nprincipal = "${principal}"\nrole = "user"\n`;
    const certificate = ([commonName, principal, role]: [string, string, string]): string =>
      `[[certificates]]\ncommon_name = "${commonName}"\nprincipal = "${principal}"\nrole = "${role}"\n`;
    writeFileSync(
      this.tokensFile,
      entry(this.principals.alice, "alice") +
        entry(this.principals.bob, "bob") +
        (options.certificates ?? []).map(certificate).join(""),
    );
  }

  /** Start a server on a free port with authentication on. */
  static async start(options: ServerOptions = {}): Promise<TestServer> {
    const server = new TestServer(await freePort(), options);
    await server.start();
    return server;
  }

  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** A client of this server acting as `who`, with the test's generous deadline. */
  client(who: keyof Principals = "alice", options: ClientOptions = {}): CofounderClient {
    return new CofounderClient({
      target: this.target,
      token: this.principals[who],
      timeoutMs: WAIT_MS,
      ...this.clientOptions,
      ...options,
    });
  }

  /** Start the process (again) and wait until it answers calls. */
  async start(): Promise<void> {
    const log = openSync(this.logPath, "a");
    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("COFOUNDER_")));
    const child = spawn(
      serverCommand(),
      [
        "--listen",
        this.target,
        "--data-dir",
        this.dataDir,
        "--auth-tokens-file",
        this.tokensFile,
        ...this.extraArgs,
      ],
      { env, stdio: ["ignore", log, log] },
    );
    closeSync(log);
    this.process = child;
    this.exited = new Promise((done) => child.once("exit", () => done()));
    await this.waitUntilServing();
  }

  /** Stop the process with `signal` (SIGTERM drains gracefully) and wait for it to exit. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    await withDeadline(this.exited, WAIT_MS, () => `server did not exit after ${signal}\n${this.log()}`);
    this.process = undefined;
  }

  /** Stop the process and delete its data directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** What the server wrote to stderr and stdout so far. */
  log(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, "utf8") : "";
  }

  private async waitUntilServing(): Promise<void> {
    const client = this.client("alice", { timeoutMs: 2_000, retries: 0 });
    const deadline = Date.now() + WAIT_MS;
    try {
      for (;;) {
        if (this.process?.exitCode != null) throw new Error(`server exited at start\n${this.log()}`);
        try {
          await client.listJobs({ pageSize: 1 });
          return;
        } catch (error) {
          if (!(error instanceof CofounderError) || Date.now() > deadline) {
            throw new Error(`server did not start serving: ${String(error)}\n${this.log()}`);
          }
        }
        await new Promise((done) => setTimeout(done, 100));
      }
    } finally {
      client.close();
    }
  }
}

/** Await `promise`, failing with `message()` after `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message())), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Poll `probe` until `accept` holds for its result, failing with the last result at the deadline. */
export async function eventually<T>(probe: () => Promise<T>, accept: (value: T) => boolean, within = WAIT_MS): Promise<T> {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await probe();
    if (accept(value)) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${within} ms; last: ${String(value)}`);
    await new Promise((done) => setTimeout(done, 50));
  }
}

/** A scripted agent that asks a person to choose, then finishes. */
export function askingAgent(): AgentSpecInput {
  return {
    brain: "scripted",
    config: {
      turns: [
        {
          text: "I need a decision",
          tool_calls: [
            {
              name: "ask_human",
              input: {
                question: "Ship it?",
                options: [{ value: "yes" }, { value: "no" }],
                recommended: "yes",
              },
            },
          ],
          usage: { input_tokens: 10, output_tokens: 5 },
        },
        { text: "done" },
      ],
    },
  };
}

/** A scripted agent that finishes after one turn. */
export function quickAgent(): AgentSpecInput {
  return { brain: "scripted", config: { turns: [{ text: "done" }] } };
}
