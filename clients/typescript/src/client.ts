/** The client: one method per RPC of the control plane, typed with the generated messages. */
import { randomUUID } from "node:crypto";
import type { JsonObject } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ServiceClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AgentControlService,
  type JobChange,
  type ListJobsResponse,
  type WatchJobEventsResponse,
  type WatchJobsResponse,
} from "./gen/cofounder/agent/v1/agent_control_service_pb.js";
import type { Escalation, EscalationStatus } from "./gen/cofounder/agent/v1/escalation_pb.js";
import {
  EscalationService,
  type ListEscalationsResponse,
  type WatchEscalationsResponse,
} from "./gen/cofounder/agent/v1/escalation_service_pb.js";
import type { JobEvent } from "./gen/cofounder/agent/v1/event_pb.js";
import { JobStatus, type Job, type JobStatusSnapshot } from "./gen/cofounder/agent/v1/job_pb.js";
import { backoffDelay, cancelled, linkedController, sleep, type BackoffOptions } from "./backoff.js";
import { tlsSessionOptions, type TlsOptions } from "./credentials.js";
import { CofounderError } from "./errors.js";

/** Where a {@link CofounderClient} connects when no target is given. */
export const DEFAULT_TARGET = "localhost:50051";
/** Call metadata key carrying `Bearer <token>`. */
export const AUTHORIZATION_HEADER = "authorization";
/** Call metadata key naming the end user a trusted backend acts for. */
export const ON_BEHALF_OF_HEADER = "cofounder-on-behalf-of";

// gRPC's own retry policies stop at five attempts; the same bound keeps a retry storm short.
const MAX_RETRIES = 4;
// A watcher that fell behind receives its backlog as one batch, which can exceed 4 MiB.
const MAX_RECEIVE_BYTES = 64 * 1024 * 1024;

/** Options of {@link CofounderClient}. */
export interface ClientOptions {
  /** `host:port` of the server, or a URL `http://host:port` / `https://host:port`. */
  target?: string;
  /** Bearer token sent with every call as `authorization: Bearer <token>`. */
  token?: string;
  /** For a trusted backend acting for one of its users: sent as `cofounder-on-behalf-of`. */
  onBehalfOf?: string;
  /**
   * `false` (default) for plaintext HTTP/2, `true` for TLS verified against Node's roots, or
   * {@link TlsOptions} for a private CA and/or mutual TLS.
   */
  tls?: boolean | TlsOptions;
  /** Default deadline of unary calls in milliseconds; `null` for none. Default 10,000. */
  timeoutMs?: number | null;
  /** Retries of a unary call that fails with `UNAVAILABLE` (0 to 4), with backoff. Default 3. */
  retries?: number;
  /** Extra Connect interceptors, run after the one adding the credentials. */
  interceptors?: Interceptor[];
}

/** Per-call options: cancellation and deadline. */
export interface CallOptions {
  /** Aborting it cancels the call (on the server too); the call fails with `CANCELLED`. */
  signal?: AbortSignal;
  /**
   * Deadline in milliseconds, sent to the server with the call. Unary calls default to the
   * client's `timeoutMs`; streams have none unless given. `null`: none.
   */
  timeoutMs?: number | null;
}

/** The agent to run, in the JSON form of `AgentSpec`. `config` is any JSON object. */
export interface AgentSpecInput {
  brain: string;
  model?: string;
  config?: JsonObject;
}

/** Arguments of {@link CofounderClient.submitJob}. */
export interface SubmitJobInput extends CallOptions {
  /** Project grouping, 1 to 128 characters of `[A-Za-z0-9._-]`. */
  projectId: string;
  /** What the agent should achieve. */
  goal: string;
  /** Spend allowed per UTC day, in microdollars (1,000,000 = one US dollar). */
  dailyBudgetMicrodollars: bigint | number;
  /** The agent to run; `brain` is required. */
  agent?: AgentSpecInput;
  /** Free-form labels for your bookkeeping. */
  labels?: Record<string, string>;
  /**
   * Idempotency key. A random UUID when omitted, so the client's own retries cannot create
   * a second job; pass your own and reuse it to make your application's retries idempotent.
   */
  requestId?: string;
}

/** Filters of {@link CofounderClient.listJobs}. */
export interface ListJobsInput extends CallOptions {
  /** Maximum jobs to return; 0 for the server default (50). */
  pageSize?: number;
  /** `nextPageToken` of the previous page, with the same filters. */
  pageToken?: string;
  /** Only jobs in one of these statuses; empty for all. */
  statuses?: JobStatus[];
  /** Only jobs of this project; empty for all. */
  projectId?: string;
}

/** Arguments of {@link CofounderClient.cancelJob}. */
export interface CancelJobInput extends CallOptions {
  /** Why; stored as the job's outcome detail. */
  reason?: string;
  /** Idempotency key; a random UUID when omitted. */
  requestId?: string;
}

/** Arguments of {@link CofounderClient.wakeAgent}. */
export interface WakeAgentInput extends CallOptions {
  /** Budget to add for the current day, in microdollars. */
  topUpMicrodollars?: bigint | number;
  /** Idempotency key; a random UUID when omitted. */
  requestId?: string;
}

/** Options of a raw watch stream. */
export interface WatchOptions extends CallOptions {
  /** Deliver entries after this sequence (0: the whole retained history); unset: live only. */
  afterSequence?: bigint | number;
}

/** Options of {@link CofounderClient.followJobEvents}. */
export interface FollowJobEventsOptions extends BackoffOptions {
  /** Aborting it ends the iteration with a `CANCELLED` CofounderError. */
  signal?: AbortSignal;
  /** As for {@link WatchOptions.afterSequence}. */
  afterSequence?: bigint | number;
  /**
   * Silence after which the connection is taken for dead and the stream resumed, in
   * milliseconds; about three heartbeat intervals of the server (15 s by default). Default
   * 60,000; 0 disables it.
   */
  idleTimeoutMs?: number;
}

/** Filters of {@link CofounderClient.watchJobs} and {@link CofounderClient.followJobs}. */
export interface FleetFilter {
  /** Only jobs of this project; empty for all. */
  projectId?: string;
  /** Only jobs in one of these statuses; a job that stops matching is announced LEFT. */
  statuses?: JobStatus[];
}

/** Options of {@link CofounderClient.followJobs}. */
export interface FollowJobsOptions extends FleetFilter, BackoffOptions {
  /** Aborting it ends the iteration with a `CANCELLED` CofounderError. */
  signal?: AbortSignal;
}

/**
 * What {@link CofounderClient.followJobs} yields: the whole view as the stream (re)started
 * (replace whatever the view held; changes continue after `sequence`), or one change.
 */
export type FleetUpdate =
  | { kind: "snapshot"; statuses: JobStatusSnapshot[]; sequence: bigint }
  | { kind: "change"; change: JobChange };

/** Filters of {@link CofounderClient.listEscalations}. */
export interface ListEscalationsInput extends CallOptions {
  /** Only this job's escalations; empty for all of the caller's. */
  jobId?: string;
  /** Only escalations in one of these statuses; empty for all. */
  statuses?: EscalationStatus[];
  /** Maximum escalations to return; 0 for the server default (50). */
  pageSize?: number;
  /** `nextPageToken` of the previous page, with the same filters. */
  pageToken?: string;
}

/** Arguments of {@link CofounderClient.resolveEscalation}. */
export interface ResolveEscalationInput extends CallOptions {
  /** The `value` of one of the escalation's options; empty when answering with `answer`. */
  decision?: string;
  /** Free-text guidance for the agent (for a rejected tool call: the message the agent gets). */
  guidance?: string;
  /** The answer to a question without options: free text, or a JSON value matching its schema. */
  answer?: string;
  /** Approving a tool call: the `toolCall.argumentsDigest` of the call the reviewer saw. */
  argumentsDigest?: string;
  /** Approving a tool call with other arguments: a JSON object valid against the tool's schema. */
  editedArgumentsJson?: string;
  /** Idempotency key; a random UUID when omitted. */
  requestId?: string;
}

/** What {@link CofounderClient.resolveEscalation} returns. */
export interface EscalationResolution {
  /** The escalation after resolution. */
  escalation: Escalation;
  /** The agent was waiting for this answer and continues now. */
  agentWaiting: boolean;
  /** When the agent sleeps on its budget: when it wakes and acts on the answer. */
  agentWakeTime?: Date;
}

/** Options of {@link CofounderClient.watchEscalations}. */
export interface WatchEscalationsOptions extends WatchOptions {
  /** Only this job's escalations; empty for all of the caller's. */
  jobId?: string;
}

const TERMINAL_STATUSES: ReadonlySet<JobStatus> = new Set([
  JobStatus.READY,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
]);

/**
 * Client of the cofounder control plane over gRPC (HTTP/2).
 *
 * One client holds one HTTP/2 connection and multiplexes any number of concurrent calls and
 * streams over it: share it, and call {@link close} when done. Every failure is a
 * {@link CofounderError}. Unary calls get a deadline of `timeoutMs` (10 s) unless the call
 * passes its own, and are retried on `UNAVAILABLE` up to `retries` times; this is safe
 * because every mutation carries a `requestId` that the retry repeats.
 *
 * ```ts
 * const client = new CofounderClient({ target: "localhost:50051", token: process.env.TOKEN });
 * const job = await client.submitJob({
 *   projectId: "demo", goal: "Write a haiku", dailyBudgetMicrodollars: 5_000_000,
 *   agent: { brain: "scripted", config: { turns: [{ text: "done" }] } },
 * });
 * for await (const event of client.followJobEvents(job.jobId, { afterSequence: 0 })) {
 *   console.log(event.sequence, event.type);
 * }
 * client.close();
 * ```
 */
export class CofounderClient {
  /** The server address this client connects to, as a URL. */
  readonly baseUrl: string;
  private readonly sessions: Http2SessionManager;
  private readonly control: ServiceClient<typeof AgentControlService>;
  private readonly escalations: ServiceClient<typeof EscalationService>;
  private readonly timeoutMs: number | null;
  private readonly retries: number;
  private closed = false;

  constructor(options: ClientOptions = {}) {
    const retries = options.retries ?? 3;
    if (!Number.isInteger(retries) || retries < 0 || retries > MAX_RETRIES) {
      throw new RangeError(`retries must be an integer between 0 and ${MAX_RETRIES}, got ${retries}`);
    }
    const timeoutMs = options.timeoutMs === undefined ? 10_000 : options.timeoutMs;
    if (timeoutMs !== null && !(timeoutMs > 0)) {
      throw new RangeError(`timeoutMs must be positive or null, got ${timeoutMs}`);
    }
    this.retries = retries;
    this.timeoutMs = timeoutMs;
    const tls = options.tls === true ? {} : options.tls || undefined;
    this.baseUrl = baseUrlOf(options.target ?? DEFAULT_TARGET, tls !== undefined);
    this.sessions = new Http2SessionManager(
      this.baseUrl,
      {
        // Streams stay open for hours. Ping a quiet connection once a minute to notice a dead
        // peer, never more often: servers answer pings more frequent than every 20 s with
        // GOAWAY too_many_pings. Idle connections without calls are not pinged.
        pingIntervalMs: 60_000,
        pingTimeoutMs: 20_000,
        pingIdleConnection: false,
      },
      tls === undefined ? {} : tlsSessionOptions(tls),
    );
    const transport: Transport = createGrpcTransport({
      baseUrl: this.baseUrl,
      sessionManager: this.sessions,
      readMaxBytes: MAX_RECEIVE_BYTES,
      interceptors: [credentialsInterceptor(options.token, options.onBehalfOf), ...(options.interceptors ?? [])],
    });
    this.control = createClient(AgentControlService, transport);
    this.escalations = createClient(EscalationService, transport);
  }

  /** Close the connection; open calls and streams fail with `UNAVAILABLE` or `CANCELLED`. */
  close(): void {
    this.closed = true;
    this.sessions.abort();
  }

  // --- AgentControlService --------------------------------------------------------------

  /** Store a new job and queue it for the executor. Returns the stored job. */
  async submitJob(input: SubmitJobInput): Promise<Job> {
    const request = {
      requestId: input.requestId ?? randomUUID(),
      projectId: input.projectId,
      goal: input.goal,
      dailyBudgetMicrodollars: BigInt(input.dailyBudgetMicrodollars),
      ...(input.agent === undefined ? {} : { agent: input.agent }),
      labels: input.labels ?? {},
    };
    const response = await this.unary((o) => this.control.submitJob(request, o), input);
    return required(response.job, "job");
  }

  /** Read one job's durable record. `NOT_FOUND` for unknown ids and other tenants' jobs. */
  async getJob(jobId: string, options: CallOptions = {}): Promise<Job> {
    const response = await this.unary((o) => this.control.getJob({ jobId }, o), options);
    return required(response.job, "job");
  }

  /** One page of the caller's jobs, newest first; {@link iterJobs} follows the tokens. */
  listJobs(input: ListJobsInput = {}): Promise<ListJobsResponse> {
    return this.unary(
      (o) =>
        this.control.listJobs(
          {
            pageSize: input.pageSize ?? 0,
            pageToken: input.pageToken ?? "",
            statuses: input.statuses ?? [],
            projectId: input.projectId ?? "",
          },
          o,
        ),
      input,
    );
  }

  /** Every job matching the filters, page after page; the deadline applies to each page. */
  async *iterJobs(input: Omit<ListJobsInput, "pageToken"> = {}): AsyncGenerator<Job, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listJobs({ ...input, pageToken });
      yield* page.jobs;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * Stop a job. Cancelling a cancelled job returns it unchanged; one that already finished
   * otherwise is `FAILED_PRECONDITION`.
   */
  async cancelJob(jobId: string, input: CancelJobInput = {}): Promise<Job> {
    const requestId = input.requestId ?? randomUUID();
    const response = await this.unary(
      (o) => this.control.cancelJob({ jobId, requestId, reason: input.reason ?? "" }, o),
      input,
    );
    return required(response.job, "job");
  }

  /** The live view of a job in one call: status, agent state, wake time, budget, escalations. */
  async getJobStatus(jobId: string, options: CallOptions = {}): Promise<JobStatusSnapshot> {
    const response = await this.unary((o) => this.control.getJobStatus({ jobId }, o), options);
    return required(response.status, "status");
  }

  /** Wake a sleeping agent now, optionally raising today's budget. */
  async wakeAgent(jobId: string, input: WakeAgentInput = {}): Promise<JobStatusSnapshot> {
    const request = {
      jobId,
      requestId: input.requestId ?? randomUUID(),
      topUpMicrodollars: BigInt(input.topUpMicrodollars ?? 0),
    };
    const response = await this.unary((o) => this.control.wakeAgent(request, o), input);
    return required(response.status, "status");
  }

  /**
   * Stream a job's events as the server sends them: a `snapshot`, then `events` batches (in
   * order, without holes) and `heartbeat`s when idle; the stream ends after the job's
   * terminal event. Breaking out of the loop, or aborting `signal`, cancels the RPC.
   * {@link followJobEvents} resumes on its own; this does not.
   */
  watchJobEvents(jobId: string, options: WatchOptions = {}): AsyncGenerator<WatchJobEventsResponse, void, undefined> {
    const afterSequence = optionalInt64(options.afterSequence);
    return this.stream((o) => this.control.watchJobEvents({ jobId, ...afterSequence }, o), options);
  }

  /**
   * A job's events one by one, resuming transparently when the stream drops.
   *
   * Snapshots and heartbeats are consumed here. The last delivered sequence is tracked; when
   * the stream fails with `UNAVAILABLE` (a server restart or drain, a broken connection, a
   * watcher that fell too far behind), goes silent for `idleTimeoutMs`, or ends before the
   * job's terminal event, it is reopened after that sequence, so every event is yielded
   * once, in order. A draining server (`SERVER_SHUTTING_DOWN`) or a too-slow watcher is
   * resumed at once; otherwise reconnects back off exponentially (or as `RetryInfo` says).
   * After `maxReconnects` consecutive failures the last error is thrown. The iteration ends
   * after the job's terminal event (a `job.status_changed` to READY, FAILED or CANCELLED).
   *
   * @throws {CofounderError} any error other than `UNAVAILABLE` (e.g. `OUT_OF_RANGE` for a
   *   cursor older than the retained history, `NOT_FOUND`), `UNAVAILABLE` once
   *   `maxReconnects` is exhausted, or `CANCELLED` when `signal` aborts.
   */
  async *followJobEvents(jobId: string, options: FollowJobEventsOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    const { maxReconnects = 10, initialBackoffMs = 200, maxBackoffMs = 10_000, idleTimeoutMs = 60_000 } = options;
    let cursor = options.afterSequence === undefined ? undefined : BigInt(options.afterSequence);
    let failures = 0;
    for (;;) {
      const attempt = linkedController(options.signal);
      const watchdog = new IdleWatchdog(idleTimeoutMs, attempt.controller);
      let finished = false;
      let received = false;
      let failure: CofounderError;
      try {
        watchdog.arm();
        for await (const message of this.watchJobEvents(jobId, {
          signal: attempt.controller.signal,
          ...(cursor === undefined ? {} : { afterSequence: cursor }),
        })) {
          watchdog.disarm();
          received = true;
          const kind = message.kind;
          if (kind.case === "snapshot") {
            // A live-only watch pins the cursor, so a reconnect neither replays history nor
            // skips events published while reconnecting.
            cursor ??= kind.value.latestEventSequence;
            finished = TERMINAL_STATUSES.has(kind.value.jobStatus) && cursor >= kind.value.latestEventSequence;
          } else if (kind.case === "events") {
            // Events or heartbeats mean the stream works; a server failing right after each
            // snapshot keeps counting towards the limit.
            failures = 0;
            for (const event of kind.value.events) {
              // A resumed stream starts after the cursor; this guards against a replay.
              if (cursor !== undefined && event.sequence <= cursor) continue;
              cursor = event.sequence;
              finished ||= isTerminalEvent(event);
              yield event;
            }
          } else if (kind.case === "heartbeat") {
            failures = 0;
          }
          watchdog.arm();
        }
        if (finished) return;
        failure = new CofounderError("UNAVAILABLE", "the event stream ended before the job's terminal event");
      } catch (error) {
        failure = CofounderError.from(error);
        if (options.signal?.aborted) throw cancelled(options.signal);
        if (watchdog.fired) {
          failure = new CofounderError("UNAVAILABLE", `no message for ${idleTimeoutMs} ms`, undefined, { cause: error });
        } else if (failure.code !== "UNAVAILABLE") {
          throw failure;
        }
      } finally {
        watchdog.disarm();
        attempt.release();
      }
      // A stream that answered and then went quiet is a connection to replace, not a failing
      // server: it does not count towards maxReconnects.
      if (!(watchdog.fired && received)) {
        if (failures >= maxReconnects) throw failure;
        failures += 1;
      }
      await sleep(reconnectDelay(failure, Math.max(failures, 1), initialBackoffMs, maxBackoffMs), options.signal);
    }
  }

  /**
   * Stream the status of every job {@link listJobs} would list with the same filters:
   * `snapshot` pages (the last has `last` set), then `changes` batches and `heartbeat`s.
   * The stream does not end by itself; {@link followJobs} resumes on its own.
   */
  watchJobs(options: FleetFilter & WatchOptions = {}): AsyncGenerator<WatchJobsResponse, void, undefined> {
    const afterSequence = optionalInt64(options.afterSequence);
    return this.stream(
      (o) =>
        this.control.watchJobs(
          { projectId: options.projectId ?? "", statuses: options.statuses ?? [], ...afterSequence },
          o,
        ),
      options,
    );
  }

  /**
   * A fleet view: a `snapshot` update with every matching job, then one `change` update per
   * job status change, resuming on its own when the stream drops.
   *
   * The cursor (the newest change or heartbeat) is tracked; when the stream fails with
   * `UNAVAILABLE` it is reopened after it, and the changes missed meanwhile arrive once
   * each, coalesced (each job as it stands). When the server no longer has the cursor
   * (`OUT_OF_RANGE`) the view is listed again: a new `snapshot` replaces everything held.
   *
   * @throws {CofounderError} any other error, `UNAVAILABLE` once `maxReconnects` is
   *   exhausted, or `CANCELLED` when `signal` aborts.
   */
  async *followJobs(options: FollowJobsOptions = {}): AsyncGenerator<FleetUpdate, void, undefined> {
    const { maxReconnects = 10, initialBackoffMs = 200, maxBackoffMs = 10_000 } = options;
    let cursor: bigint | undefined;
    let failures = 0;
    for (;;) {
      let pages: JobStatusSnapshot[] = [];
      let failure: CofounderError;
      try {
        for await (const message of this.watchJobs({
          projectId: options.projectId ?? "",
          statuses: options.statuses ?? [],
          ...(options.signal === undefined ? {} : { signal: options.signal }),
          ...(cursor === undefined ? {} : { afterSequence: cursor }),
        })) {
          failures = 0;
          const kind = message.kind;
          if (kind.case === "snapshot") {
            pages.push(...kind.value.statuses);
            if (kind.value.last) {
              cursor = kind.value.latestSequence;
              const statuses = pages;
              pages = [];
              yield { kind: "snapshot", statuses, sequence: cursor };
            }
          } else if (kind.case === "changes") {
            for (const change of kind.value.changes) {
              cursor = cursor === undefined || change.sequence > cursor ? change.sequence : cursor;
              yield { kind: "change", change };
            }
          } else if (kind.case === "heartbeat" && cursor !== undefined) {
            if (kind.value.latestSequence > cursor) cursor = kind.value.latestSequence;
          }
        }
        // The fleet feed never ends by itself: a clean end is a connection that went away.
        failure = new CofounderError("UNAVAILABLE", "the fleet stream ended");
      } catch (error) {
        failure = CofounderError.from(error);
        if (options.signal?.aborted) throw cancelled(options.signal);
        if (failure.code === "OUT_OF_RANGE" && cursor !== undefined) {
          cursor = undefined; // list again
          continue;
        }
        if (failure.code !== "UNAVAILABLE") throw failure;
      }
      if (failures >= maxReconnects) throw failure;
      failures += 1;
      await sleep(reconnectDelay(failure, failures, initialBackoffMs, maxBackoffMs), options.signal);
    }
  }

  // --- EscalationService ----------------------------------------------------------------

  /** Read one escalation. `NOT_FOUND` for unknown ids and other tenants' escalations. */
  async getEscalation(escalationId: string, options: CallOptions = {}): Promise<Escalation> {
    const response = await this.unary((o) => this.escalations.getEscalation({ escalationId }, o), options);
    return required(response.escalation, "escalation");
  }

  /** One page of the caller's escalations, newest first. */
  listEscalations(input: ListEscalationsInput = {}): Promise<ListEscalationsResponse> {
    return this.unary(
      (o) =>
        this.escalations.listEscalations(
          {
            jobId: input.jobId ?? "",
            statuses: input.statuses ?? [],
            pageSize: input.pageSize ?? 0,
            pageToken: input.pageToken ?? "",
          },
          o,
        ),
      input,
    );
  }

  /** Every escalation matching the filters, page after page. */
  async *iterEscalations(
    input: Omit<ListEscalationsInput, "pageToken"> = {},
  ): AsyncGenerator<Escalation, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listEscalations({ ...input, pageToken });
      yield* page.escalations;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * Answer an escalation with one of its option values; the decision reaches the waiting
   * agent. A decision that is not an option is `INVALID_ARGUMENT`; an escalation no longer
   * pending is `FAILED_PRECONDITION` (reason `ESCALATION_ALREADY_RESOLVED`).
   */
  async resolveEscalation(escalationId: string, input: ResolveEscalationInput): Promise<EscalationResolution> {
    const requestId = input.requestId ?? randomUUID();
    const response = await this.unary(
      (o) =>
        this.escalations.resolveEscalation(
          {
            escalationId,
            requestId,
            decision: input.decision ?? "",
            guidance: input.guidance ?? "",
            answer: input.answer ?? "",
            argumentsDigest: input.argumentsDigest ?? "",
            editedArgumentsJson: input.editedArgumentsJson ?? "",
          },
          o,
        ),
      input,
    );
    return {
      escalation: required(response.escalation, "escalation"),
      agentWaiting: response.agentWaiting,
      ...(response.agentWakeTime === undefined ? {} : { agentWakeTime: timestampDate(response.agentWakeTime) }),
    };
  }

  /**
   * Stream escalation events visible to the caller: a `snapshot` of pending escalations,
   * then `events` batches (raised, resolved, withdrawn) and `heartbeat`s when idle.
   */
  watchEscalations(options: WatchEscalationsOptions = {}): AsyncGenerator<WatchEscalationsResponse, void, undefined> {
    const afterSequence = optionalInt64(options.afterSequence);
    return this.stream(
      (o) => this.escalations.watchEscalations({ jobId: options.jobId ?? "", ...afterSequence }, o),
      options,
    );
  }

  // --- plumbing -------------------------------------------------------------------------

  private async unary<T>(call: (options: ConnectCallOptions) => Promise<T>, options: CallOptions): Promise<T> {
    this.ensureOpen();
    const timeoutMs = options.timeoutMs === undefined ? this.timeoutMs : options.timeoutMs;
    const deadline = timeoutMs === null ? undefined : Date.now() + timeoutMs;
    for (let attempt = 0; ; attempt += 1) {
      const remaining = deadline === undefined ? undefined : Math.max(1, Math.ceil(deadline - Date.now()));
      try {
        return await call({
          ...(options.signal === undefined ? {} : { signal: options.signal }),
          ...(remaining === undefined ? {} : { timeoutMs: remaining }),
        });
      } catch (error) {
        const failure = callError(error, options.signal);
        if (failure.code !== "UNAVAILABLE" || attempt >= this.retries) throw failure;
        const delay = backoffDelay(attempt + 1, 100, 2_000);
        if (deadline !== undefined && Date.now() + delay >= deadline) throw failure;
        await sleep(delay, options.signal);
      }
    }
  }

  private async *stream<T>(
    open: (options: ConnectCallOptions) => AsyncIterable<T>,
    options: CallOptions,
  ): AsyncGenerator<T, void, undefined> {
    this.ensureOpen();
    const call = linkedController(options.signal);
    try {
      const timeoutMs = options.timeoutMs ?? undefined;
      yield* open({ signal: call.controller.signal, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    } catch (error) {
      throw callError(error, options.signal);
    } finally {
      // Reached on break, return() and errors alike: a no-op once the call has finished,
      // otherwise the server sees the cancellation.
      call.controller.abort();
      call.release();
    }
  }

  private ensureOpen(): void {
    if (this.closed) throw new Error("the client is closed");
  }
}

interface ConnectCallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Arms an abort of `controller` after `timeoutMs` without a message; 0 disables it. */
class IdleWatchdog {
  fired = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly timeoutMs: number,
    private readonly controller: AbortController,
  ) {}

  arm(): void {
    this.disarm();
    if (this.timeoutMs <= 0) return;
    this.timer = setTimeout(() => {
      this.fired = true;
      this.controller.abort();
    }, this.timeoutMs);
  }

  disarm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * The CofounderError for a failed call. A call whose connection failed or broke is
 * UNAVAILABLE, as gRPC has it (and retrying may help), whatever Node's HTTP/2 layer made of
 * it: a TLS handshake that failed (Connect says INTERNAL), a reset socket (ABORTED), or the
 * streams of a dropped connection reset with CANCEL (CANCELLED, though nobody cancelled).
 */
function callError(error: unknown, signal: AbortSignal | undefined): CofounderError {
  if (signal?.aborted) return cancelled(signal);
  const failure = CofounderError.from(error);
  const systemError = nodeErrorCode(failure.cause);
  const lost =
    failure.code === "CANCELLED" ||
    (systemError !== undefined && (failure.code === "INTERNAL" || failure.code === "ABORTED" || failure.code === "UNKNOWN"));
  if (!lost) return failure;
  const why = systemError === undefined ? failure.rawMessage : `${systemError}: ${failure.rawMessage}`;
  return new CofounderError("UNAVAILABLE", `the connection failed (${why})`, failure.details, {
    metadata: failure.metadata,
    cause: error,
  });
}

/** The `code` of the first Node.js error in a chain of causes (e.g. `ECONNRESET`). */
function nodeErrorCode(error: unknown): string | undefined {
  for (let reason = error, depth = 0; reason instanceof Error && depth < 8; depth += 1) {
    const code = (reason as { code?: unknown }).code;
    if (typeof code === "string") return code;
    reason = reason.cause;
  }
  return undefined;
}

function reconnectDelay(failure: CofounderError, failures: number, initialMs: number, maxMs: number): number {
  const reason = failure.reason;
  // A draining server or a watcher that fell behind: the next attempt can go at once.
  if (failures === 1 && (reason === "SERVER_SHUTTING_DOWN" || reason === "WATCHER_TOO_SLOW")) return 0;
  return failure.retryDelayMs ?? backoffDelay(failures, initialMs, maxMs);
}

function isTerminalEvent(event: JobEvent): boolean {
  return event.payload.case === "jobStatusChanged" && TERMINAL_STATUSES.has(event.payload.value.status);
}

function optionalInt64(value: bigint | number | undefined): { afterSequence?: bigint } {
  return value === undefined ? {} : { afterSequence: BigInt(value) };
}

function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new CofounderError("INTERNAL", `the server's response has no ${field}`);
  return value;
}

function baseUrlOf(target: string, tls: boolean): string {
  if (/^https?:\/\//.test(target)) {
    if (tls !== target.startsWith("https://")) {
      throw new TypeError(`target ${target} does not match tls: ${tls}`);
    }
    return target;
  }
  return `${tls ? "https" : "http"}://${target}`;
}

function credentialsInterceptor(token: string | undefined, onBehalfOf: string | undefined): Interceptor {
  // Plain call metadata rather than call credentials: it also works on plaintext loopback.
  return (next) => (request) => {
    if (token) request.header.set(AUTHORIZATION_HEADER, `Bearer ${token}`);
    if (onBehalfOf) request.header.set(ON_BEHALF_OF_HEADER, onBehalfOf);
    return next(request);
  };
}
