/**
 * One error type for every failed call, with the server's rich error details decoded.
 *
 * The control plane reports errors as gRPC status codes carrying `google.rpc` details in the
 * `grpc-status-details-bin` trailer: `BadRequest` (which fields are wrong), `ErrorInfo` (a
 * machine-readable `reason` in the `cofounder.dev` domain, plus metadata such as
 * `last_sequence`), `RetryInfo` (how long to wait before retrying), `ResourceInfo`,
 * `PreconditionFailure` and `QuotaFailure`. {@link CofounderError} exposes them as typed
 * properties so callers never parse trailers themselves.
 */
import { ConnectError } from "@connectrpc/connect";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type PreconditionFailure,
  type QuotaFailure,
  type ResourceInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** The gRPC status codes, by their canonical names. */
export type StatusCode =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

const STATUS_NAMES: readonly StatusCode[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** A detail of a kind this client does not decode, as received. */
export interface OtherDetail {
  /** The fully qualified message name, e.g. `google.rpc.Help`. */
  readonly typeName: string;
  /** The serialized message. */
  readonly value: Uint8Array;
}

/**
 * The `google.rpc` error details attached to a failed call, decoded. Each property is
 * `undefined` when the server did not attach that kind of detail; the first of each kind wins.
 */
export interface ErrorDetails {
  /** Field violations of an `INVALID_ARGUMENT` request. */
  readonly badRequest?: BadRequest;
  /** Machine-readable `reason`, `domain` and `metadata` of the error. */
  readonly errorInfo?: ErrorInfo;
  /** How long to wait before retrying. */
  readonly retryInfo?: RetryInfo;
  /** The resource the error is about (e.g. the job that was not found). */
  readonly resourceInfo?: ResourceInfo;
  /** Which preconditions a `FAILED_PRECONDITION` call violated. */
  readonly preconditionFailure?: PreconditionFailure;
  /** Which quota a `RESOURCE_EXHAUSTED` call exceeded. */
  readonly quotaFailure?: QuotaFailure;
  /** Details of any other type. */
  readonly other: readonly OtherDetail[];
}

/** One entry of a `BadRequest`: which field is wrong, and why. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

const DECODED: readonly DescMessage[] = [
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  ResourceInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
];

const RETRYABLE: ReadonlySet<StatusCode> = new Set(["UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED"]);

/**
 * A call to the control plane failed.
 *
 * Every failure of a unary call or a stream (also mid-iteration), including a deadline that
 * passed (`DEADLINE_EXCEEDED`) and an aborted `AbortSignal` (`CANCELLED`), surfaces as this
 * type. The underlying `ConnectError` is kept as `cause`.
 */
export class CofounderError extends Error {
  override name = "CofounderError";
  /** The gRPC status code, by name (e.g. `"INVALID_ARGUMENT"`). */
  readonly code: StatusCode;
  /** The numeric gRPC status code (e.g. 3). */
  readonly grpcCode: number;
  /** The server's human-readable error message, without the code prefix of `message`. */
  readonly rawMessage: string;
  /** The decoded `google.rpc` error details. */
  readonly details: ErrorDetails;
  /** Response headers and trailers of the failed call. */
  readonly metadata: Headers;

  constructor(
    code: StatusCode,
    rawMessage: string,
    details: ErrorDetails = { other: [] },
    options: { metadata?: Headers; cause?: unknown } = {},
  ) {
    super(`${code}: ${rawMessage}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.grpcCode = Math.max(0, STATUS_NAMES.indexOf(code));
    this.rawMessage = rawMessage;
    this.details = details;
    this.metadata = options.metadata ?? new Headers();
  }

  /** `{ field, description }` pairs of the `BadRequest` detail; empty when there is none. */
  get fieldViolations(): FieldViolation[] {
    return (this.details.badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    }));
  }

  /** The machine-readable `ErrorInfo.reason` (e.g. `JOB_NOT_FOUND`), if the server sent one. */
  get reason(): string | undefined {
    return this.details.errorInfo?.reason;
  }

  /** Milliseconds the server asks the caller to wait before retrying (`RetryInfo`), if given. */
  get retryDelayMs(): number | undefined {
    const delay = this.details.retryInfo?.retryDelay;
    if (delay === undefined) return undefined;
    return Number(delay.seconds) * 1000 + Math.floor(delay.nanos / 1_000_000);
  }

  /**
   * Whether repeating the same call may succeed: `UNAVAILABLE`, `ABORTED` and
   * `DEADLINE_EXCEEDED`, and any error carrying `RetryInfo`. Every RPC of this API is a read
   * or a mutation keyed by `requestId`, so a retry is safe when it repeats the `requestId`.
   */
  get retryable(): boolean {
    return RETRYABLE.has(this.code) || this.details.retryInfo !== undefined;
  }

  /** Translate any error thrown by a call into a `CofounderError` (returned as is if it is one). */
  static from(error: unknown): CofounderError {
    if (error instanceof CofounderError) return error;
    const connectError = ConnectError.from(error);
    const code = STATUS_NAMES[connectError.code] ?? "UNKNOWN";
    return new CofounderError(code, connectError.rawMessage, decodeDetails(connectError), {
      metadata: connectError.metadata,
      cause: error,
    });
  }
}

function decodeDetails(error: ConnectError): ErrorDetails {
  const first = <Desc extends DescMessage>(desc: Desc): MessageShape<Desc> | undefined => {
    try {
      return error.findDetails(desc)[0];
    } catch {
      // A detail that does not parse is ignored rather than trusted: the code and message stand.
      return undefined;
    }
  };
  const decodedNames = new Set(DECODED.map((desc) => desc.typeName));
  const other: OtherDetail[] = [];
  for (const detail of error.details) {
    if ("type" in detail && !decodedNames.has(detail.type)) {
      other.push({ typeName: detail.type, value: detail.value });
    }
  }
  return {
    badRequest: first(BadRequestSchema),
    errorInfo: first(ErrorInfoSchema),
    retryInfo: first(RetryInfoSchema),
    resourceInfo: first(ResourceInfoSchema),
    preconditionFailure: first(PreconditionFailureSchema),
    quotaFailure: first(QuotaFailureSchema),
    other,
  };
}

/** Whether `error` ended its call with gRPC status `code`. */
export function isStatus(error: unknown, code: StatusCode): error is CofounderError {
  return error instanceof CofounderError && error.code === code;
}
