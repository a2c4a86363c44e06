// What the tests check of a call that must fail.
import assert from "node:assert/strict";
import { CofounderError } from "@cofounder/client";

/** The CofounderError `promise` rejects with; fails the test if it resolves or rejects otherwise. */
export async function rejection(promise: Promise<unknown>): Promise<CofounderError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof CofounderError, `expected a CofounderError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}
