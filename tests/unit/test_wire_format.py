"""The pub/sub message format replicas exchange events in."""

from __future__ import annotations

import json

import pytest

from cofounder_server.events.hub import WireEvent, pack, unpack

EVENTS = [
    WireEvent(7, b"\x0a\x03abc\n\n", terminal=False, owner_id="", job_id="job-1"),
    WireEvent(8, b"", terminal=False, owner_id="", job_id="job-1"),
    WireEvent(9, b"\x00\xffdone", terminal=True, owner_id="alice", job_id="job-1"),
]


def test_several_events_round_trip_in_one_message() -> None:
    assert unpack(pack(EVENTS)) == EVENTS


def test_one_event_round_trips() -> None:
    assert unpack(pack(EVENTS[:1])) == EVENTS[:1]


def test_a_header_that_is_not_a_list_of_entries_yields_no_events() -> None:
    single = json.dumps([12, True, "bob", "job-2"]).encode() + b"\n" + b"payload\nwith newline"
    assert unpack(single) == []


@pytest.mark.parametrize(
    "message",
    [
        b"no separator",
        b"not json\n",
        b'[[1, false, "", "j", 5]]\nabc',  # shorter than its header says
        b'[[1, false, "", "j", 2]]\nabcd',  # longer: bytes nobody accounts for
        b'[[1, false, "", "j"]]\nabc',  # an entry without its length
        b'{"a": 1}\nabc',
    ],
)
def test_malformed_messages_yield_no_events(message: bytes) -> None:
    assert unpack(message) == []
