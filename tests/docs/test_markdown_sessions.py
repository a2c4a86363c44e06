"""The reading and matching behind the executed READMEs: a drift is caught and shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.markdown_sessions import Bindings, Mismatch, items, match_output, report, sessions_in

SHOWN_ID = "e109bf31-c2da-4e90-9888-40c74637f1c3"
REAL_ID = "3bc90b94-701a-4558-8ea9-4c37dc735329"


def check(expected: str, actual: str, bindings: Bindings | None = None) -> Bindings:
    bindings = bindings or Bindings()
    match_output(items(expected, expected=True), items(actual, expected=False), bindings)
    return bindings


def test_marked_blocks_become_commands_with_their_output(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        "text\n<!-- docs-test: demo wait -->\n```console\n"
        '$ grpcurl -d \'{"a":\n    1}\' \\\n    host Svc/M\n{ "b": 2 }\n\n$ echo hi\nhi\n```\n'
        "```console\n$ not executed\n```\n"
    )
    [session] = sessions_in(document)
    assert session.name == "demo"
    first, second = session.commands
    assert first.text == "grpcurl -d '{\"a\":\n    1}' \\\n    host Svc/M"
    assert first.output == ('{ "b": 2 }',)
    assert first.line == 4
    assert first.options == {"wait"}
    assert (second.text, second.output) == ("echo hi", ("hi",))


def test_a_marker_with_an_unknown_option_is_refused(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text("<!-- docs-test: demo sometimes -->\n```console\n$ true\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test option"):
        sessions_in(document)


def test_ellipses_allow_more_keys_and_items_but_shown_values_must_match() -> None:
    check('{ "status": { ..., "state": "SLEEPING" } }', '{"status": {"id": 1, "state": "SLEEPING"}}')
    check('{ "list": [ { "n": 1 }, ... ] }', '{"list": [{"n": 0}, {"n": 1}, {"n": 2}]}')
    with pytest.raises(Mismatch, match=r"output\[0\]\.status\.state: expected 'SLEEPING', got 'WORKING'"):
        check('{ "status": { ..., "state": "SLEEPING" } }', '{"status": {"state": "WORKING"}}')
    with pytest.raises(Mismatch, match="unexpected 'id'"):
        check('{ "status": { "state": "SLEEPING" } }', '{"status": {"id": 1, "state": "SLEEPING"}}')
    with pytest.raises(Mismatch, match="expected 1 items, got 2"):
        check("line one", "line one\nline two")
    check("  1)  detail", "  1)\tdetail")  # text compares word by word
    with pytest.raises(Mismatch):
        check("1) detail", "1) details")


def test_ids_are_bound_once_and_must_stay_the_same() -> None:
    bindings = check(f'{{"job_id": "{SHOWN_ID}"}}', f'{{"job_id": "{REAL_ID}"}}')
    assert bindings.apply(f"get {SHOWN_ID}") == f"get {REAL_ID}"
    check(f"job '{SHOWN_ID}' is done", f"job '{REAL_ID}' is done", bindings)
    with pytest.raises(Mismatch, match="expected the id shown as"):
        check(f'{{"job_id": "{SHOWN_ID}"}}', '{"job_id": "00000000-0000-4000-8000-000000000000"}', bindings)


def test_times_and_durations_match_any_and_a_shown_midnight_only_a_midnight() -> None:
    check('{"t": "2026-12-02T14:46:32.388153Z"}', '{"t": "2026-11-26T09:30:00Z"}')
    check('{"t": "2026-11-27T00:00:00Z"}', '{"t": "2027-01-01T00:00:00Z"}')
    with pytest.raises(Mismatch, match="expected a midnight"):
        check('{"t": "2026-11-27T00:00:00Z"}', '{"t": "2026-11-26T09:30:00Z"}')
    check('{"delay": "2s"}', '{"delay": "0.250s"}')
    with pytest.raises(Mismatch, match="expected a duration"):
        check('{"delay": "2s"}', '{"delay": "soon"}')
    check('{"text": "Answered by local: ..."}', '{"text": "Answered by local: deploy."}')


def test_a_report_names_the_document_line_and_shows_a_diff(tmp_path: Path) -> None:
    document = tmp_path / "README.md"
    document.write_text('intro\n<!-- docs-test: demo -->\n```console\n$ echo \'{"a": 1}\'\n{"a": 2}\n```\n')
    [command] = sessions_in(document)[0].commands
    message = report(command, '{"a": 1}\n', "output[0].a: expected 2, got 1")
    assert message.startswith("README.md:4: the output of\n  $ echo '{\"a\": 1}'")
    assert "(lines 5-5)" in message
    assert '-{"a": 2}\n+{"a": 1}' in message
