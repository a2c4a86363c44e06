"""Datetimes become protobuf Timestamps exactly as protobuf's own conversion makes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from cofounder_server.api.convert import timestamp


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 10, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 10, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 10, 1, 2, 3, 456_789, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 10, 12, 0, 0, 1),  # naive: read as UTC, as protobuf does
    ],
)
def test_timestamp_matches_protobuf(moment: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert timestamp(moment) == expected
    assert timestamp(moment).ToDatetime(tzinfo=UTC) == (
        moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    )
