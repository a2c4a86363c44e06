"""``cofounder``: the command-line client of the control plane.

When stdout is not a terminal (or with ``--json``), every command prints its result as JSON
(the protobuf JSON mapping, with the proto field names), one object per line, so output pipes
into ``jq``. On a terminal it prints for people: the fields that are set, tables for lists,
a live view for ``watch``. Errors go to stderr as ``error: CODE: message`` followed by any
field violations, and set the exit status:

====  =====================================================================
0     success
1     unexpected failure (an uncaught exception)
2     usage error (bad arguments, unreadable certificate file, invalid JSON)
10+N  the call failed with gRPC status code N, e.g. 13 INVALID_ARGUMENT,
      15 NOT_FOUND, 16 ALREADY_EXISTS, 19 FAILED_PRECONDITION, 21 OUT_OF_RANGE,
      24 UNAVAILABLE, 26 UNAUTHENTICATED
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client import terminal
from cofounder_client.client import DEFAULT_TARGET, Client, FleetSnapshot
from cofounder_client.credentials import TLSConfig
from cofounder_client.demo import DemoFailedError, run_demo_command
from cofounder_client.errors import CofounderError
from cofounder_client.ids import AmbiguousIdError, resolve_escalation_id, resolve_job_id
from cofounder_client.live import RICH_HINT, LiveOutput, PlainOutput, follow_view, rich_output
from cofounder_client.view import JobView

__all__ = ["exit_code_for", "main"]

EXIT_USAGE: Final = 2
EXIT_RPC_BASE: Final = 10
EXIT_INTERRUPTED: Final = 130

_Handler = Callable[[Client, argparse.Namespace], Awaitable[None]]

# Reconnects of a followed stream: about two minutes of outage (a server restart) before
# giving up, retrying at least every 5 s.
_MAX_RECONNECTS: Final = 30
_MAX_BACKOFF: Final = 5.0
# Events before the current one that the live view lists when it opens.
_RECENT_EVENTS: Final = 8


def _version() -> str:
    try:
        return _metadata.version("cofounder-client")
    except _metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


_ID_HELP: Final = "the id, or a unique prefix of it (at least 4 characters)"

_EPILOG = """\
output: JSON lines when stdout is not a terminal or with --json (for scripts); on a terminal,
text for people and a live view for `watch`. Ids may be shortened to a unique prefix
(at least 4 characters).

environment: COFOUNDER_TARGET, COFOUNDER_TOKEN and COFOUNDER_ON_BEHALF_OF supply defaults for
--target, --token and --on-behalf-of (prefer COFOUNDER_TOKEN: arguments are visible to other
local users). Connection options and --json may also follow the command.

exit status: 0 success, 1 unexpected failure, 2 usage error, 10+N gRPC status code N
(13 INVALID_ARGUMENT, 15 NOT_FOUND, 19 FAILED_PRECONDITION, 24 UNAVAILABLE, ...), 130 interrupted.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cofounder`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The process exit status (see the module documentation).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help and on usage errors; main() reports a status instead.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        asyncio.run(_run(args))
    except CofounderError as error:
        _print_error(error)
        return exit_code_for(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except DemoFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, _UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def exit_code_for(error: CofounderError) -> int:
    """The CLI's exit status for a failed call: 10 plus the numeric gRPC status code."""
    code_number: int = error.code.value[0]
    return EXIT_RPC_BASE + code_number


class _UsageError(Exception):
    """A usage error found after parsing (exit status 2)."""


async def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        # The demo may start a server of its own before there is anything to connect to.
        await run_demo_command(args, lambda target: _client(args, target), for_people=_for_people(args))
        return
    handler: _Handler = args.handler
    async with _client(args) as client:
        await handler(client, args)


def _client(args: argparse.Namespace, target: str | None = None) -> Client:
    tls: TLSConfig | bool = False
    if args.ca_file or args.cert_file or args.key_file or args.server_name:
        tls = TLSConfig.from_files(
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            server_name_override=args.server_name,
        )
    elif args.tls:
        tls = True
    return Client(
        target or args.target or DEFAULT_TARGET,
        token=args.token,
        on_behalf_of=args.on_behalf_of,
        tls=tls,
        timeout=args.timeout or None,
    )


# --- output --------------------------------------------------------------------------------


def _for_people(args: argparse.Namespace) -> bool:
    """Text for a person (a terminal, no --json) rather than JSON lines for a program."""
    return not args.json and _stdout_is_terminal()


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _emit(message: Message) -> None:
    document = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    # Flushed per line so `cofounder watch ... | jq` shows events as they arrive.
    print(json.dumps(document), flush=True)


def _show(args: argparse.Namespace, message: Message) -> None:
    """One result: JSON for programs, its set fields as lines for people."""
    if _for_people(args):
        _print_lines(terminal.format_record(message))
    else:
        _emit(message)


def _print_lines(lines: Sequence[str]) -> None:
    print("\n".join(lines), flush=True)


def _print_error(error: CofounderError) -> None:
    lines = [f"error: {error.code.name}: {error.message}"]
    if error.reason:
        lines.append(f"  reason: {error.reason}")
    lines.extend(f"  {field}: {description}" for field, description in error.field_violations)
    if error.retry_delay is not None:
        lines.append(f"  retry after: {error.retry_delay:g}s")
    print("\n".join(lines), file=sys.stderr)


async def _emit_all(messages: AsyncIterator[Message]) -> None:
    async for message in messages:
        _emit(message)


def _print_reconnect(target: str) -> Callable[[CofounderError, int, float], None]:
    def report(error: CofounderError, attempt: int, delay: float) -> None:
        # On stderr, so stdout stays the stream's output.
        print(
            f"reconnecting to {target} (attempt {attempt} of {_MAX_RECONNECTS}, next in {delay:.1f}s): "
            f"{error.code.name}: {error.message}",
            file=sys.stderr,
            flush=True,
        )

    return report


async def _job_id(client: Client, text: str) -> str:
    try:
        return await resolve_job_id(client, text)
    except AmbiguousIdError as error:
        raise _UsageError(str(error)) from None


async def _escalation_id(client: Client, text: str) -> str:
    try:
        return await resolve_escalation_id(client, text)
    except AmbiguousIdError as error:
        raise _UsageError(str(error)) from None


# --- commands ------------------------------------------------------------------------------


async def _submit(client: Client, args: argparse.Namespace) -> None:
    agent: dict[str, Any] = {"brain": args.brain}
    if args.model:
        agent["model"] = args.model
    if args.config_json is not None:
        agent["config"] = args.config_json
    policy = _tool_approval_policy(args)
    if policy:
        agent["tool_approval"] = policy
    job = await client.submit_job(
        project_id=args.project,
        goal=args.goal,
        daily_budget_microdollars=args.budget_microdollars,
        agent=agent,
        labels=dict(args.label),
        request_id=args.request_id,
    )
    _show(args, job)


def _tool_approval_policy(args: argparse.Namespace) -> dict[str, Any]:
    """``AgentSpec.tool_approval`` (JSON form) from the submit options; empty without any.
    The server judges the patterns and the deadline's range; what is incoherent between the
    options is refused here, before a call."""
    if not args.approve_tools:
        if args.approval_deadline is not None or args.approve_on_timeout:
            raise _UsageError("--approval-deadline and --approve-on-timeout need --approve-tools")
        return {}
    policy: dict[str, Any] = {"tools": args.approve_tools}
    if args.approval_deadline:
        policy["deadline_seconds"] = args.approval_deadline
    if args.approve_on_timeout:
        if not args.approval_deadline:
            raise _UsageError(
                "--approve-on-timeout needs --approval-deadline: a call is approved when it passes"
            )
        policy["on_timeout"] = job_pb2.ToolApprovalTimeout.Name(job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE)
    return policy


async def _get(client: Client, args: argparse.Namespace) -> None:
    _show(args, await client.get_job(await _job_id(client, args.job_id)))


async def _list(client: Client, args: argparse.Namespace) -> None:
    if args.all:
        async with contextlib.aclosing(
            client.iter_jobs(page_size=args.page_size, statuses=args.status, project_id=args.project)
        ) as jobs:
            if _for_people(args):
                _print_lines(terminal.job_rows([job async for job in jobs]))
            else:
                await _emit_all(jobs)
        return
    page = await client.list_jobs(
        page_size=args.page_size, page_token=args.page_token, statuses=args.status, project_id=args.project
    )
    if _for_people(args):
        _print_lines(terminal.job_rows(page.jobs))
    else:
        for job in page.jobs:
            _emit(job)
    _report_next_page(page.next_page_token)


async def _cancel(client: Client, args: argparse.Namespace) -> None:
    job_id = await _job_id(client, args.job_id)
    _show(args, await client.cancel_job(job_id, reason=args.reason, request_id=args.request_id))


async def _status(client: Client, args: argparse.Namespace) -> None:
    _show(args, await client.get_job_status(await _job_id(client, args.job_id)))


async def _wake(client: Client, args: argparse.Namespace) -> None:
    job_id = await _job_id(client, args.job_id)
    _show(
        args,
        await client.wake_agent(
            job_id, top_up_microdollars=args.top_up_microdollars, request_id=args.request_id
        ),
    )


async def _watch(client: Client, args: argparse.Namespace) -> None:
    job_id = await _job_id(client, args.job_id)
    if _for_people(args):
        await _watch_live(client, job_id, args)
    elif args.follow:
        # One unary call first: a server that cannot be reached at all is an error at once,
        # not a minute of silent reconnects.
        await client.get_job_status(job_id)
        async with contextlib.aclosing(
            client.follow_job_events(
                job_id,
                after_sequence=args.after,
                max_reconnects=_MAX_RECONNECTS,
                max_backoff=_MAX_BACKOFF,
                on_reconnect=_print_reconnect(client.target),
            )
        ) as events:
            await _emit_all(events)
    else:
        async with contextlib.aclosing(
            client.watch_job_events(job_id, after_sequence=args.after)
        ) as messages:
            await _emit_all(messages)


async def _watch_live(client: Client, job_id: str, args: argparse.Namespace) -> None:
    view = JobView(job_id, recent=_RECENT_EVENTS)
    # The job first: an unreachable server or an unknown job is an error at once.
    view.apply_job(await client.get_job(job_id))
    after = args.after
    if after is None:
        latest = (await client.get_job_status(job_id)).latest_event_sequence
        after = max(0, latest - _RECENT_EVENTS)
    await follow_view(
        client,
        view,
        _live_output(),
        after_sequence=after,
        max_reconnects=_MAX_RECONNECTS,
        max_backoff=_MAX_BACKOFF,
    )


def _live_output() -> LiveOutput:
    output = rich_output()
    if output is None:
        print(RICH_HINT, file=sys.stderr)
        return PlainOutput()
    return output


async def _jobs(client: Client, args: argparse.Namespace) -> None:
    if not args.watch:
        statuses: list[job_pb2.JobStatusSnapshot] = []
        async with contextlib.aclosing(
            client.watch_jobs(project_id=args.project, statuses=args.status)
        ) as messages:
            async for message in messages:
                for status in message.snapshot.statuses:
                    if _for_people(args):
                        statuses.append(status)
                    else:
                        _emit(status)
                if message.snapshot.last:
                    break
        if _for_people(args):
            _print_lines(terminal.format_table(terminal.FLEET_HEADER, map(terminal.fleet_row, statuses)))
        return
    # A terminal gets a table redrawn in place; a pipe gets JSON lines (what happened, in order).
    table = _FleetTable() if _for_people(args) else None
    async with contextlib.aclosing(
        client.follow_jobs(
            project_id=args.project,
            statuses=args.status,
            max_reconnects=_MAX_RECONNECTS,
            max_backoff=_MAX_BACKOFF,
            on_reconnect=_print_reconnect(client.target),
        )
    ) as updates:
        async for update in updates:
            if table is not None:
                table.apply(update)
                table.draw()
            elif isinstance(update, FleetSnapshot):
                _emit(
                    control_pb2.JobStatusPage(
                        statuses=update.statuses, last=True, latest_sequence=update.sequence
                    )
                )
            else:
                _emit(update)


class _FleetTable:
    """The fleet view of ``jobs --watch`` on a terminal: one row per job, redrawn in place."""

    def __init__(self) -> None:
        self._rows: dict[str, job_pb2.JobStatusSnapshot] = {}
        self._sequence = 0

    def apply(self, update: FleetSnapshot | control_pb2.JobChange) -> None:
        if isinstance(update, FleetSnapshot):
            self._rows = {status.job_id: status for status in update.statuses}
            self._sequence = update.sequence
            return
        if update.kind == control_pb2.JOB_CHANGE_KIND_LEFT:
            self._rows.pop(update.status.job_id, None)
        else:
            self._rows[update.status.job_id] = update.status
        self._sequence = update.sequence

    def draw(self) -> None:
        lines = terminal.format_table(
            terminal.FLEET_HEADER, (terminal.fleet_row(self._rows[job_id]) for job_id in sorted(self._rows))
        )
        lines.append(f"{len(self._rows)} jobs, at sequence {self._sequence}")
        # Home the cursor, draw, clear the rest of the screen: no flicker, no scrolling.
        print("\x1b[H" + "\n".join(line + "\x1b[K" for line in lines) + "\n\x1b[J", end="", flush=True)


async def _escalations_list(client: Client, args: argparse.Namespace) -> None:
    job_id = await _job_id(client, args.job) if args.job else ""
    if args.all:
        async with contextlib.aclosing(
            client.iter_escalations(job_id=job_id, statuses=args.status, page_size=args.page_size)
        ) as escalations:
            if _for_people(args):
                every = [escalation async for escalation in escalations]
                _print_lines(terminal.escalation_rows(every) + terminal.pending_lines(every))
            else:
                await _emit_all(escalations)
        return
    page = await client.list_escalations(
        job_id=job_id, statuses=args.status, page_size=args.page_size, page_token=args.page_token
    )
    if _for_people(args):
        _print_lines(terminal.escalation_rows(page.escalations) + terminal.pending_lines(page.escalations))
    else:
        for escalation in page.escalations:
            _emit(escalation)
    _report_next_page(page.next_page_token)


async def _escalations_get(client: Client, args: argparse.Namespace) -> None:
    escalation = await client.get_escalation(await _escalation_id(client, args.escalation_id))
    _show(args, escalation)
    if _for_people(args):
        about = terminal.escalation_detail_lines(escalation) + terminal.decide_lines(escalation, short=False)
        if about:
            _print_lines(["", *about])


async def _escalations_resolve(client: Client, args: argparse.Namespace) -> None:
    interactive = not (args.decision or args.answer)
    if interactive and not sys.stdin.isatty():
        # Checked before any call: a script without an answer must not hang on a prompt.
        raise _UsageError("--decision or --answer is required when standard input is not a terminal")
    escalation_id = await _escalation_id(client, args.escalation_id)
    decision, answer, guidance, digest = args.decision, args.answer, args.guidance, args.digest
    edited = _edited_json(args.edit_json)
    if interactive:
        escalation = await client.get_escalation(escalation_id)
        _require_pending(escalation)
        if escalation.options:
            decision, guidance = await _ask_decision(escalation, guidance, edited)
        else:
            answer = await _ask_answer(escalation)
        if terminal.is_tool_approval(escalation):
            if decision in _APPROVING:
                # The person chose after seeing this call: approving names its digest.
                digest = digest or escalation.tool_call.arguments_digest
            else:
                # A rejected call never runs: an edit has nothing to apply to (the server refuses one).
                edited = ""
    await _resolve(
        client,
        escalation_id,
        args,
        decision=decision,
        guidance=guidance,
        answer=answer,
        arguments_digest=digest,
        edited_arguments_json=edited,
    )


_APPROVING: Final = frozenset({"approve", "approve_for_job"})


async def _escalations_approve(client: Client, args: argparse.Namespace) -> None:
    escalation = await _tool_approval(client, args.escalation_id, "approve")
    call = escalation.tool_call
    edited = _edited_json(args.edit_json)
    _review(escalation.tool_name, call.arguments_json, edited)
    await _resolve(
        client,
        escalation.escalation_id,
        args,
        decision="approve_for_job" if args.for_job else "approve",
        guidance=args.guidance,
        # The digest of the call shown above, unless the one reviewed earlier is given.
        arguments_digest=args.digest or call.arguments_digest,
        edited_arguments_json=edited,
    )


async def _escalations_reject(client: Client, args: argparse.Namespace) -> None:
    escalation = await _tool_approval(client, args.escalation_id, "reject")
    await _resolve(client, escalation.escalation_id, args, decision="reject", guidance=args.message)


async def _tool_approval(client: Client, text: str, verb: str) -> escalation_pb2.Escalation:
    """The escalation ``text`` names, which must be a tool call waiting for approval."""
    escalation = await client.get_escalation(await _escalation_id(client, text))
    if not terminal.is_tool_approval(escalation):
        raise _UsageError(
            f"escalation {escalation.escalation_id} is a question, not a tool call to {verb}: "
            f"answer it with cofounder escalations resolve {escalation.escalation_id[: terminal.SHORT_ID]}"
        )
    return escalation


def _edited_json(edit: dict[str, Any] | None) -> str:
    return "" if edit is None else json.dumps(edit, sort_keys=True)


def _review(tool: str, arguments_json: str, edited_json: str) -> None:
    """Show the call being approved on stderr: its arguments and, when editing, the diff."""
    arguments = json.loads(arguments_json or "{}")
    print(f"call: {tool} {json.dumps(arguments, indent=2, sort_keys=True)}", file=sys.stderr)
    _print_edit(arguments_json, edited_json)


def _print_edit(arguments_json: str, edited_json: str) -> None:
    if edited_json:
        before = json.dumps(json.loads(arguments_json or "{}"), indent=2, sort_keys=True).splitlines()
        after = json.dumps(json.loads(edited_json), indent=2, sort_keys=True).splitlines()
        diff = difflib.unified_diff(before, after, "arguments", "edited", lineterm="")
        print("\n".join(diff), file=sys.stderr)


async def _resolve(
    client: Client,
    escalation_id: str,
    args: argparse.Namespace,
    *,
    decision: str = "",
    guidance: str = "",
    answer: str = "",
    arguments_digest: str = "",
    edited_arguments_json: str = "",
) -> None:
    resolution = await client.resolve_escalation(
        escalation_id,
        decision=decision,
        guidance=guidance,
        answer=answer,
        arguments_digest=arguments_digest,
        edited_arguments_json=edited_arguments_json,
        request_id=args.request_id,
    )
    _show(args, resolution.escalation)
    # On stderr, so stdout stays the escalation.
    if resolution.agent_waiting:
        print("agent: waiting for this answer; it continues now", file=sys.stderr)
    elif resolution.agent_wake_time is not None:
        wake = resolution.agent_wake_time.isoformat().replace("+00:00", "Z")
        print(f"agent: asleep on its budget; it acts on the answer when it wakes at {wake}", file=sys.stderr)
    else:
        print("agent: not waiting (the job is not running)", file=sys.stderr)


async def _ask_decision(
    escalation: escalation_pb2.Escalation, guidance: str, edited_json: str = ""
) -> tuple[str, str]:
    """Show the question (a tool call with all its arguments, and the diff of an edit) and
    read the choice (a number or an option value) and guidance."""
    values = [option.value for option in escalation.options]
    # The dialogue goes to stderr: stdout stays the resolved escalation, as with --decision.
    print("\n".join(terminal.question_lines(escalation, argument_lines=None)), file=sys.stderr, flush=True)
    if terminal.is_tool_approval(escalation):
        _print_edit(escalation.tool_call.arguments_json, edited_json)
    default = escalation.recommended_action if escalation.recommended_action in values else ""
    prompt = f"choice [1-{len(values)}" + (f", Enter for {default}" if default else "") + "]: "
    while True:
        answer = (await _read_line(prompt)).strip()
        if not answer and default:
            decision = default
            break
        if answer.isdigit() and 1 <= int(answer) <= len(values):
            decision = values[int(answer) - 1]
            break
        if answer in values:
            decision = answer
            break
        print(f"choose a number from 1 to {len(values)} or one of: {', '.join(values)}", file=sys.stderr)
    if not guidance:
        what = "message for the agent" if decision == "reject" else "guidance for the agent"
        guidance = (await _read_line(f"{what} (optional): ")).strip()
    return decision, guidance


async def _ask_answer(escalation: escalation_pb2.Escalation) -> str:
    """Show a question without options and read its answer: free text within its limit, or a
    JSON value (checked to be JSON here; the server checks it against the schema)."""
    print("\n".join(terminal.question_lines(escalation)), file=sys.stderr, flush=True)
    takes_value = escalation.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_VALUE
    limit = escalation.answer_max_chars
    while True:
        answer = (await _read_line("answer (JSON): " if takes_value else "answer: ")).strip()
        if not answer:
            print("an answer is required", file=sys.stderr)
        elif takes_value and (problem := _json_problem(answer)):
            print(f'not JSON ({problem}); type a JSON value, e.g. "text" or {{"key": 1}}', file=sys.stderr)
        elif not takes_value and limit and len(answer) > limit:
            print(f"at most {limit:,} characters, not {len(answer):,}", file=sys.stderr)
        else:
            return answer


def _json_problem(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return str(error)
    return ""


def _require_pending(escalation: escalation_pb2.Escalation) -> None:
    if escalation.status != escalation_pb2.ESCALATION_STATUS_PENDING:
        status = escalation_pb2.EscalationStatus.Name(escalation.status).removeprefix("ESCALATION_STATUS_")
        raise _UsageError(f"escalation {escalation.escalation_id} is {status.lower()}, not pending")


async def _read_line(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    # In a thread: reading a terminal blocks, and the event loop must keep the channel alive.
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise _UsageError("no choice made (end of input)")
    return line


async def _escalations_watch(client: Client, args: argparse.Namespace) -> None:
    job_id = await _job_id(client, args.job) if args.job else ""
    async with contextlib.aclosing(
        client.watch_escalations(job_id=job_id, after_sequence=args.after)
    ) as messages:
        if _for_people(args):
            async for message in messages:
                for line in terminal.escalation_watch_lines(message):
                    print(line, flush=True)
        else:
            await _emit_all(messages)


def _report_next_page(token: str) -> None:
    # On stderr, so stdout stays a stream of objects of one kind.
    if token:
        print(f"next_page_token: {token} (pass --page-token, or use --all)", file=sys.stderr)


# --- argument parsing ----------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cofounder",
        description="Command-line client of the cofounder control plane.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_connection_options(parser, with_defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = _command(commands, "submit", _submit, "submit a job")
    submit.add_argument("--project", required=True, help="project id")
    submit.add_argument("--goal", required=True, help="what the agent should achieve")
    budget = submit.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget-microdollars", type=_non_negative_int, metavar="N", help="daily budget in microdollars"
    )
    budget.add_argument(
        "--budget-usd",
        dest="budget_microdollars",
        type=_usd_to_microdollars,
        metavar="USD",
        help="daily budget in US dollars, e.g. 2.50",
    )
    submit.add_argument("--brain", required=True, help="agent brain plug-in, e.g. scripted")
    submit.add_argument("--model", default="", help="model identifier for the brain")
    submit.add_argument(
        "--config-json",
        type=_json_object,
        metavar="JSON",
        help="brain configuration as a JSON object, or @FILE to read it from a file",
    )
    submit.add_argument(
        "--label", action="append", type=_label, default=[], metavar="KEY=VALUE", help="label (repeatable)"
    )
    approval = submit.add_argument_group("tool approvals (see docs/escalations.md)")
    approval.add_argument(
        "--approve-tools",
        action="extend",
        type=_tool_patterns,
        default=[],
        metavar="TOOLS",
        help="tools whose calls wait for a person's approval: names or glob patterns, "
        "comma-separated, e.g. 'deploy_*,shell' (repeatable)",
    )
    approval.add_argument(
        "--approval-deadline",
        type=_non_negative_int,
        metavar="SECONDS",
        help="how long a call waits for a decision (default: until someone decides or the job ends)",
    )
    approval.add_argument(
        "--approve-on-timeout",
        action="store_true",
        help="at the deadline, approve the call as the agent asked (default: reject it)",
    )
    submit.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    get = _command(commands, "get", _get, "print a job")
    get.add_argument("job_id", metavar="JOB_ID", help=_ID_HELP)

    list_ = _command(commands, "list", _list, "list jobs, newest first (a table on a terminal)")
    _add_job_filters(list_)
    _add_paging_options(list_)

    cancel = _command(commands, "cancel", _cancel, "cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID", help=_ID_HELP)
    cancel.add_argument("--reason", default="", help="why; stored with the job")
    cancel.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    status = _command(commands, "status", _status, "print a job's live status")
    status.add_argument("job_id", metavar="JOB_ID", help=_ID_HELP)

    wake = _command(commands, "wake", _wake, "wake a sleeping agent")
    wake.add_argument("job_id", metavar="JOB_ID", help=_ID_HELP)
    wake.add_argument(
        "--top-up-microdollars", type=_non_negative_int, default=0, metavar="N", help="budget to add today"
    )
    wake.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    watch = _command(
        commands,
        "watch",
        _watch,
        "follow a job until it ends: a live view on a terminal, JSON lines when piped",
    )
    watch.add_argument("job_id", metavar="JOB_ID", help=_ID_HELP)
    watch.add_argument(
        "--after",
        type=_non_negative_int,
        metavar="SEQ",
        help="events after this sequence (0: all retained history; default: live events only, "
        "or in the live view the last few)",
    )
    watch.add_argument(
        "--follow",
        action="store_true",
        help="JSON: print individual events (no snapshots or heartbeats) and reconnect when the stream "
        "drops (the live view always does)",
    )

    jobs = _command(
        commands, "jobs", _jobs, "print the status of every job (as GetJobStatus); --watch follows them"
    )
    _add_job_filters(jobs)
    jobs.add_argument(
        "--watch",
        action="store_true",
        help="keep following: a table updated in place on a terminal, JSON lines when piped",
    )

    _add_escalation_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="run a one-minute demo job and watch it live",
        description=(
            "Start a server (embedded, in a temporary data dir; or the one at --target / "
            "COFOUNDER_TARGET) and run a scripted job on it while the live view shows it: the "
            "agent works, spends its budget, sleeps on it, is woken with a top-up, asks a "
            "question that is answered, and finishes."
        ),
    )
    demo.set_defaults(handler=None)
    _add_connection_options(demo, with_defaults=False)
    demo.add_argument(
        "--pace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the demo waits before it tops up the budget and before it answers (default 10)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="data directory of the embedded server (default: a temporary one, removed afterwards)",
    )
    return parser


def _add_escalation_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    escalations = commands.add_parser("escalations", help="read and resolve escalations")
    escalation_commands = escalations.add_subparsers(
        dest="escalation_command", required=True, metavar="COMMAND"
    )

    esc_list = _command(
        escalation_commands,
        "list",
        _escalations_list,
        "list escalations, newest first (a table on a terminal)",
    )
    esc_list.add_argument("--job", default="", metavar="JOB_ID", help="only this job's escalations")
    esc_list.add_argument(
        "--status",
        action="append",
        type=_EnumName(escalation_pb2.EscalationStatus.DESCRIPTOR, "ESCALATION_STATUS_"),
        default=[],
        help="only escalations in this status, e.g. pending (repeatable)",
    )
    _add_paging_options(esc_list)

    esc_get = _command(escalation_commands, "get", _escalations_get, "print an escalation")
    esc_get.add_argument("escalation_id", metavar="ESCALATION_ID", help=_ID_HELP)

    resolve = _command(escalation_commands, "resolve", _escalations_resolve, "answer an escalation")
    resolve.add_argument("escalation_id", metavar="ESCALATION_ID", help=_ID_HELP)
    answer = resolve.add_mutually_exclusive_group()
    answer.add_argument(
        "--decision",
        default="",
        help="the value of one of the escalation's options (default: show them and ask, on a terminal)",
    )
    answer.add_argument(
        "--answer", default="", help="free text, or a JSON value, for a question that asks one"
    )
    resolve.add_argument("--guidance", default="", help="free-text guidance for the agent")
    resolve.add_argument("--digest", default="", help="approving a tool call: its arguments_digest")
    resolve.add_argument(
        "--edit-json",
        type=_json_object,
        metavar="JSON",
        help="approving a tool call: run it with these arguments instead (JSON object, or @file)",
    )
    resolve.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    approve = _command(
        escalation_commands,
        "approve",
        _escalations_approve,
        "approve a tool call waiting for approval (shows its arguments, and the diff of an edit)",
    )
    approve.add_argument("escalation_id", metavar="ESCALATION_ID", help=_ID_HELP)
    approve.add_argument(
        "--digest", default="", help="the arguments_digest you reviewed (default: that of the call shown)"
    )
    approve.add_argument(
        "--edit-json",
        type=_json_object,
        metavar="JSON",
        help="run the call with these arguments instead (JSON object, or @file)",
    )
    approve.add_argument("--for-job", action="store_true", help="approve this tool for the rest of the job")
    approve.add_argument("--guidance", default="", help="a message for the agent")
    approve.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    reject = _command(escalation_commands, "reject", _escalations_reject, "reject a tool call: it never runs")
    reject.add_argument("escalation_id", metavar="ESCALATION_ID", help=_ID_HELP)
    reject.add_argument("--message", default="", help="what the agent is told, besides that it was rejected")
    reject.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    esc_watch = _command(escalation_commands, "watch", _escalations_watch, "stream escalation events")
    esc_watch.add_argument("--job", default="", metavar="JOB_ID", help="only this job's escalations")
    esc_watch.add_argument(
        "--after", type=_non_negative_int, metavar="SEQ", help="feed events after this sequence"
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: _Handler, help_: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help_, description=help_, epilog="connection and output options: see cofounder --help"
    )
    parser.set_defaults(handler=handler)
    _add_connection_options(parser, with_defaults=False)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    # The options are declared on the top-level parser (with defaults and help) and again on
    # every command (without either), so they work on either side of the command name but are
    # explained once, in `cofounder --help`. SUPPRESS keeps a command's parser from
    # overwriting values given before the command.
    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    def help_(text: str) -> str:
        return text if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output (also accepted after the command)")
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help=help_("print JSON lines even on a terminal (the default when stdout is not a terminal)"),
    )
    group.add_argument(
        "--target",
        # Unset unless given: the demo starts a server of its own when no target is given.
        default=default(os.environ.get("COFOUNDER_TARGET")),
        help=help_(f"server host:port (env COFOUNDER_TARGET; default {DEFAULT_TARGET})"),
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("COFOUNDER_TOKEN")),
        help=help_("bearer token (env COFOUNDER_TOKEN)"),
    )
    group.add_argument(
        "--on-behalf-of",
        default=default(os.environ.get("COFOUNDER_ON_BEHALF_OF")),
        metavar="USER_ID",
        help=help_("end user a trusted backend acts for (env COFOUNDER_ON_BEHALF_OF)"),
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help=help_("use TLS, verifying against system roots"),
    )
    group.add_argument(
        "--ca-file", default=default(None), help=help_("CA bundle (PEM) for the server; implies --tls")
    )
    group.add_argument(
        "--cert-file", default=default(None), help=help_("client certificate (PEM) for mutual TLS")
    )
    group.add_argument(
        "--key-file", default=default(None), help=help_("client private key (PEM) for mutual TLS")
    )
    group.add_argument(
        "--server-name",
        default=default(None),
        help=help_("expected name in the server certificate; implies --tls"),
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(10.0),
        metavar="SECONDS",
        help=help_("deadline of unary calls (default 10; 0 for none); streams have none"),
    )


def _add_job_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        action="append",
        type=_EnumName(job_pb2.JobStatus.DESCRIPTOR, "JOB_STATUS_"),
        default=[],
        help="only jobs in this status, e.g. running (repeatable)",
    )
    parser.add_argument("--project", default="", help="only jobs of this project")


def _add_paging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=_non_negative_int, default=0, metavar="N", help="items per page")
    parser.add_argument("--page-token", default="", help="token printed by the previous page")
    parser.add_argument("--all", action="store_true", help="follow page tokens and print every item")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _usd_to_microdollars(text: str) -> int:
    # Decimal, not float: 0.29 dollars must become exactly 290,000 microdollars.
    try:
        micro = Decimal(text) * 1_000_000
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if not micro.is_finite() or micro < 0 or micro != micro.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a non-negative amount with at most 6 decimals: {text!r}")
    return int(micro)


def _json_object(text: str) -> dict[str, Any]:
    try:
        source = Path(text[1:]).read_text() if text.startswith("@") else text
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _tool_patterns(text: str) -> list[str]:
    patterns = [pattern.strip() for pattern in text.split(",")]
    if not all(patterns):
        raise argparse.ArgumentTypeError(f"expected comma-separated tool names or patterns, got {text!r}")
    return patterns


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class _EnumName:
    """An argparse ``type`` accepting a proto enum value by short or full name, in any case."""

    def __init__(self, descriptor: EnumDescriptor, prefix: str) -> None:
        self._numbers = {
            name.removeprefix(prefix).lower(): value.number
            for name, value in descriptor.values_by_name.items()
            if value.number != 0  # UNSPECIFIED is never a useful filter
        }
        self._prefix = prefix.lower()

    def __call__(self, text: str) -> int:
        number = self._numbers.get(text.lower().removeprefix(self._prefix))
        if number is None:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(self._numbers)})"
            )
        return number
