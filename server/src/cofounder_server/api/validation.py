"""Request validation: every violation is collected and reported with its field path."""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Mapping
from types import TracebackType
from typing import Literal, Protocol

from google.protobuf import struct_pb2

from cofounder_server.domain.errors import FieldViolation, InvalidArgument

# Identifiers are matched whole (fullmatch, and \A...\Z for any other use): "$" also matches
# before a final newline, which would let "<id>\n" through.
UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
PROJECT_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
BRAIN_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
LABEL_KEY_RE = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")
# Visible ASCII only: request ids end up in logs and in unique indexes.
REQUEST_ID_RE = re.compile(r"\A[\x21-\x7e]{1,128}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

MAX_GOAL_CHARS = 10_000
MAX_REASON_CHARS = 1_000
MAX_MODEL_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
MAX_AGENT_CONFIG_BYTES = 256 * 1024
MAX_BUDGET_MICRODOLLARS = 10**12


class Resumable(Protocol):
    """A watch request with an optional ``after_sequence`` cursor."""

    @property
    def after_sequence(self) -> int: ...

    def HasField(self, field_name: Literal["after_sequence"]) -> bool: ...


class Validator:
    """Collects field violations; leaving the ``with`` block raises them all at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def __enter__(self) -> Validator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self.violations:
            raise InvalidArgument(self.violations)

    def fail(self, field: str, description: str) -> None:
        """Record one violation."""
        self.violations.append(FieldViolation(field, description))

    def uuid(self, field: str, value: str) -> None:
        """A required canonical lower-case UUID."""
        if not value:
            self.fail(field, "is required")
        elif not UUID_RE.fullmatch(value):
            self.fail(field, "must be a canonical lower-case UUID")

    def after_sequence(self, request: Resumable) -> int | None:
        """A watch's optional resume cursor (``after_sequence``): not negative; ``None`` when
        unset (start from now, or from a snapshot)."""
        if not request.HasField("after_sequence"):
            return None
        if request.after_sequence < 0:
            self.fail("after_sequence", "must not be negative")
        return request.after_sequence

    def request_id(self, field: str, value: str) -> None:
        """An optional idempotency key."""
        if value and not REQUEST_ID_RE.fullmatch(value):
            self.fail(field, "must be 1 to 128 visible ASCII characters")

    def pattern(self, field: str, value: str, pattern: re.Pattern[str], description: str) -> None:
        """A required string matching ``pattern``."""
        if not value:
            self.fail(field, "is required")
        elif not pattern.fullmatch(value):
            self.fail(field, description)

    def text(self, field: str, value: str, max_chars: int, *, required: bool) -> None:
        """Free text: optionally required, bounded, without control characters (tabs/newlines ok)."""
        if required and not value.strip():
            self.fail(field, "is required")
        elif len(value) > max_chars:
            self.fail(field, f"must be at most {max_chars} characters")
        elif _CONTROL_RE.search(value):
            self.fail(field, "must not contain control characters")

    def int_range(self, field: str, value: int, low: int, high: int) -> None:
        """An integer within [low, high]."""
        if not low <= value <= high:
            self.fail(field, f"must be between {low} and {high}")

    def enum_values(self, field: str, values: Iterable[int], known: Container[int]) -> None:
        """Each value a known, specified enum number."""
        for index, value in enumerate(values):
            if value == 0 or value not in known:
                self.fail(f"{field}[{index}]", f"{value} is not a valid value")

    def labels(self, field: str, labels: Mapping[str, str]) -> None:
        """Caller bookkeeping labels."""
        if len(labels) > MAX_LABELS:
            self.fail(field, f"must have at most {MAX_LABELS} entries")
            return
        for key, value in sorted(labels.items()):
            if not LABEL_KEY_RE.fullmatch(key):
                self.fail(f"{field}[{key!r}]", "key must be 1 to 63 characters of [a-z0-9_-]")
            else:
                self.text(f"{field}[{key!r}]", value, MAX_LABEL_VALUE_CHARS, required=False)

    def struct(self, field: str, value: struct_pb2.Struct) -> None:
        """A bounded JSON object that any backend can store (no NUL, no NaN or infinity)."""
        if value.ByteSize() > MAX_AGENT_CONFIG_BYTES:
            self.fail(field, f"must be at most {MAX_AGENT_CONFIG_BYTES} bytes")
        elif _unstorable(value):
            self.fail(field, "must not contain NUL characters or non-finite numbers")


def _unstorable(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value) -> bool:
    if isinstance(value, struct_pb2.Struct):
        return any("\x00" in key or _unstorable(item) for key, item in value.fields.items())
    if isinstance(value, struct_pb2.ListValue):
        return any(_unstorable(item) for item in value.values)
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return "\x00" in value.string_value
    if kind == "number_value":
        return not math.isfinite(value.number_value)
    if kind == "struct_value":
        return _unstorable(value.struct_value)
    if kind == "list_value":
        return _unstorable(value.list_value)
    return False
