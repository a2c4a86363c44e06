/** Waiting between attempts: exponential backoff with jitter, cut short by an AbortSignal. */
import { CofounderError } from "./errors.js";

/** Reconnect pacing of the `follow*` iterables. */
export interface BackoffOptions {
  /** Consecutive failed attempts tolerated before the last error is thrown. Default 10. */
  maxReconnects?: number;
  /** Delay before the first reconnect, in milliseconds. Default 200. */
  initialBackoffMs?: number;
  /** Upper bound of the delay between reconnects, in milliseconds. Default 10,000. */
  maxBackoffMs?: number;
}

/** The delay before attempt number `failures` (1-based), with jitter of up to half of it. */
export function backoffDelay(failures: number, initialMs: number, maxMs: number): number {
  const delay = Math.min(maxMs, initialMs * 2 ** (failures - 1));
  // Jitter spreads out the reconnects of many watchers after a server restart.
  return delay * (0.5 + Math.random() / 2);
}

/** Resolve after `ms`, or reject with a `CANCELLED` CofounderError as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(cancelled(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(cancelled(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The error an aborted call surfaces as. */
export function cancelled(signal: AbortSignal): CofounderError {
  return new CofounderError("CANCELLED", "the call was aborted", undefined, { cause: signal.reason });
}

/**
 * An AbortController that also aborts when `parent` does; `release()` detaches it from
 * `parent` (a long-lived signal would otherwise keep one listener per call).
 */
export function linkedController(parent?: AbortSignal): { controller: AbortController; release: () => void } {
  const controller = new AbortController();
  if (parent === undefined) return { controller, release: () => {} };
  if (parent.aborted) {
    controller.abort(parent.reason);
    return { controller, release: () => {} };
  }
  const onAbort = (): void => controller.abort(parent.reason);
  parent.addEventListener("abort", onAbort, { once: true });
  return { controller, release: () => parent.removeEventListener("abort", onAbort) };
}
