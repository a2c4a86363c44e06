/**
 * TypeScript client of the cofounder control plane.
 *
 * {@link CofounderClient} has one method per RPC; the message and enum types are generated
 * from the protos and re-exported here.
 */
export * from "./client.js";
export * from "./credentials.js";
export * from "./errors.js";
export type { BackoffOptions } from "./backoff.js";
export * from "./gen/cofounder/agent/v1/agent_control_service_pb.js";
export * from "./gen/cofounder/agent/v1/escalation_pb.js";
export * from "./gen/cofounder/agent/v1/escalation_service_pb.js";
export * from "./gen/cofounder/agent/v1/event_pb.js";
export * from "./gen/cofounder/agent/v1/job_pb.js";
export type {
  BadRequest,
  BadRequest_FieldViolation,
  ErrorInfo,
  PreconditionFailure,
  QuotaFailure,
  ResourceInfo,
  RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
