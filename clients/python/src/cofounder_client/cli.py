"""``cofounder``: the command-line client of the control plane.

Every command prints its result as JSON (the protobuf JSON mapping, with the proto field
names), one object per line, so output pipes into ``jq``. Errors go to stderr as
``error: CODE: message`` followed by any field violations, and set the exit status:

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
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client.client import DEFAULT_TARGET, Client, FleetSnapshot
from cofounder_client.credentials import TLSConfig
from cofounder_client.errors import CofounderError

__all__ = ["exit_code_for", "main"]

EXIT_USAGE: Final = 2
EXIT_RPC_BASE: Final = 10
EXIT_INTERRUPTED: Final = 130

_Handler = Callable[[Client, argparse.Namespace], Awaitable[None]]

_EPILOG = """\
environment: COFOUNDER_TARGET, COFOUNDER_TOKEN and COFOUNDER_ON_BEHALF_OF supply defaults for
--target, --token and --on-behalf-of (prefer COFOUNDER_TOKEN: arguments are visible to other
local users). Connection options may also follow the command.

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
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def exit_code_for(error: CofounderError) -> int:
    """The CLI's exit status for a failed call: 10 plus the numeric gRPC status code."""
    code_number: int = error.code.value[0]
    return EXIT_RPC_BASE + code_number


async def _run(args: argparse.Namespace) -> None:
    handler: _Handler = args.handler
    async with _client(args) as client:
        await handler(client, args)


def _client(args: argparse.Namespace) -> Client:
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
        args.target,
        token=args.token,
        on_behalf_of=args.on_behalf_of,
        tls=tls,
        timeout=args.timeout or None,
    )


# --- output --------------------------------------------------------------------------------


def _emit(message: Message) -> None:
    document = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    # Flushed per line so `cofounder watch ... | jq` shows events as they arrive.
    print(json.dumps(document), flush=True)


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


# --- commands ------------------------------------------------------------------------------


async def _submit(client: Client, args: argparse.Namespace) -> None:
    agent: dict[str, Any] = {"brain": args.brain}
    if args.model:
        agent["model"] = args.model
    if args.config_json is not None:
        agent["config"] = args.config_json
    job = await client.submit_job(
        project_id=args.project,
        goal=args.goal,
        daily_budget_microdollars=args.budget_microdollars,
        agent=agent,
        labels=dict(args.label),
        request_id=args.request_id,
    )
    _emit(job)


async def _get(client: Client, args: argparse.Namespace) -> None:
    _emit(await client.get_job(args.job_id))


async def _list(client: Client, args: argparse.Namespace) -> None:
    if args.all:
        async with contextlib.aclosing(
            client.iter_jobs(page_size=args.page_size, statuses=args.status, project_id=args.project)
        ) as jobs:
            await _emit_all(jobs)
        return
    page = await client.list_jobs(
        page_size=args.page_size, page_token=args.page_token, statuses=args.status, project_id=args.project
    )
    for job in page.jobs:
        _emit(job)
    _report_next_page(page.next_page_token)


async def _cancel(client: Client, args: argparse.Namespace) -> None:
    _emit(await client.cancel_job(args.job_id, reason=args.reason, request_id=args.request_id))


async def _status(client: Client, args: argparse.Namespace) -> None:
    _emit(await client.get_job_status(args.job_id))


async def _wake(client: Client, args: argparse.Namespace) -> None:
    _emit(
        await client.wake_agent(
            args.job_id, top_up_microdollars=args.top_up_microdollars, request_id=args.request_id
        )
    )


async def _watch(client: Client, args: argparse.Namespace) -> None:
    if args.follow:
        async with contextlib.aclosing(
            client.follow_job_events(args.job_id, after_sequence=args.after)
        ) as events:
            await _emit_all(events)
    else:
        async with contextlib.aclosing(
            client.watch_job_events(args.job_id, after_sequence=args.after)
        ) as messages:
            await _emit_all(messages)


async def _jobs(client: Client, args: argparse.Namespace) -> None:
    if not args.watch:
        async with contextlib.aclosing(
            client.watch_jobs(project_id=args.project, statuses=args.status)
        ) as messages:
            async for message in messages:
                for status in message.snapshot.statuses:
                    _emit(status)
                if message.snapshot.last:
                    return
    # A terminal gets a table redrawn in place; a pipe gets JSON lines (what happened, in order).
    table = _FleetTable() if sys.stdout.isatty() else None
    async with contextlib.aclosing(
        client.follow_jobs(project_id=args.project, statuses=args.status)
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

    _COLUMNS = ("JOB", "STATUS", "AGENT", "BUDGET", "SPENT TODAY", "WAKES", "ESCALATIONS", "SEQ")

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
        rows = [self._COLUMNS, *(self._row(self._rows[job_id]) for job_id in sorted(self._rows))]
        widths = [max(len(row[index]) for row in rows) for index in range(len(self._COLUMNS))]
        lines = ["  ".join(map(str.ljust, row, widths)) for row in rows]
        lines.append(f"{len(self._rows)} jobs, at sequence {self._sequence}")
        # Home the cursor, draw, clear the rest of the screen: no flicker, no scrolling.
        print("\x1b[H" + "\n".join(line + "\x1b[K" for line in lines) + "\n\x1b[J", end="", flush=True)

    @staticmethod
    def _row(status: job_pb2.JobStatusSnapshot) -> tuple[str, ...]:
        return (
            status.job_id,
            job_pb2.JobStatus.Name(status.job_status).removeprefix("JOB_STATUS_").lower(),
            job_pb2.AgentState.Name(status.agent_state).removeprefix("AGENT_STATE_").lower(),
            f"{status.budget_percent}%" if status.HasField("budget_percent") else "-",
            f"${status.spent_today_microdollars / 1_000_000:.2f}",
            status.wake_time.ToDatetime().strftime("%H:%M:%S") if status.HasField("wake_time") else "-",
            str(len(status.pending_escalation_ids)),
            str(status.latest_event_sequence),
        )


async def _escalations_list(client: Client, args: argparse.Namespace) -> None:
    if args.all:
        async with contextlib.aclosing(
            client.iter_escalations(job_id=args.job, statuses=args.status, page_size=args.page_size)
        ) as escalations:
            await _emit_all(escalations)
        return
    page = await client.list_escalations(
        job_id=args.job, statuses=args.status, page_size=args.page_size, page_token=args.page_token
    )
    for escalation in page.escalations:
        _emit(escalation)
    _report_next_page(page.next_page_token)


async def _escalations_get(client: Client, args: argparse.Namespace) -> None:
    _emit(await client.get_escalation(args.escalation_id))


async def _escalations_resolve(client: Client, args: argparse.Namespace) -> None:
    await _resolve(
        client,
        args,
        decision=args.decision,
        guidance=args.guidance,
        answer=args.answer,
        arguments_digest=args.digest,
        edited_arguments_json=args.edit_json,
    )


async def _escalations_approve(client: Client, args: argparse.Namespace) -> None:
    escalation = await client.get_escalation(args.escalation_id)
    call = escalation.tool_call
    edited = "" if args.edit_json is None else json.dumps(args.edit_json, sort_keys=True)
    _review(escalation.tool_name, call.arguments_json, edited)
    await _resolve(
        client,
        args,
        decision="approve_for_job" if args.for_job else "approve",
        guidance=args.guidance,
        # The digest of the call shown above, unless the one reviewed earlier is given.
        arguments_digest=args.digest or call.arguments_digest,
        edited_arguments_json=edited,
    )


async def _escalations_reject(client: Client, args: argparse.Namespace) -> None:
    await _resolve(client, args, decision="reject", guidance=args.message)


def _review(tool: str, arguments_json: str, edited_json: str) -> None:
    """Show the call being approved on stderr: its arguments and, when editing, the diff."""
    arguments = json.loads(arguments_json or "{}")
    print(f"call: {tool} {json.dumps(arguments, indent=2, sort_keys=True)}", file=sys.stderr)
    if edited_json:
        before = json.dumps(arguments, indent=2, sort_keys=True).splitlines()
        after = json.dumps(json.loads(edited_json), indent=2, sort_keys=True).splitlines()
        diff = difflib.unified_diff(before, after, "arguments", "edited", lineterm="")
        print("\n".join(diff), file=sys.stderr)


async def _resolve(
    client: Client,
    args: argparse.Namespace,
    *,
    decision: str = "",
    guidance: str = "",
    answer: str = "",
    arguments_digest: str = "",
    edited_arguments_json: str = "",
) -> None:
    resolution = await client.resolve_escalation(
        args.escalation_id,
        decision=decision,
        guidance=guidance,
        answer=answer,
        arguments_digest=arguments_digest,
        edited_arguments_json=edited_arguments_json,
        request_id=args.request_id,
    )
    _emit(resolution.escalation)
    # On stderr, so stdout stays the escalation.
    if resolution.agent_waiting:
        print("agent: waiting for this answer; it continues now", file=sys.stderr)
    elif resolution.agent_wake_time is not None:
        wake = resolution.agent_wake_time.isoformat().replace("+00:00", "Z")
        print(f"agent: asleep on its budget; it acts on the answer when it wakes at {wake}", file=sys.stderr)
    else:
        print("agent: not waiting (the job is not running)", file=sys.stderr)


async def _escalations_watch(client: Client, args: argparse.Namespace) -> None:
    async with contextlib.aclosing(
        client.watch_escalations(job_id=args.job, after_sequence=args.after)
    ) as messages:
        await _emit_all(messages)


def _report_next_page(token: str) -> None:
    # On stderr, so stdout stays a stream of objects of one kind.
    if token:
        print(f"next_page_token: {token} (pass --page-token, or use --all)", file=sys.stderr)


# --- argument parsing ----------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cofounder",
        description="Command-line client of the cofounder control plane. Prints JSON, one object per line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    submit.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    get = _command(commands, "get", _get, "print a job")
    get.add_argument("job_id", metavar="JOB_ID")

    list_ = _command(commands, "list", _list, "list jobs, newest first, one per line")
    _add_job_filters(list_)
    _add_paging_options(list_)

    cancel = _command(commands, "cancel", _cancel, "cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--reason", default="", help="why; stored with the job")
    cancel.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    status = _command(commands, "status", _status, "print a job's live status")
    status.add_argument("job_id", metavar="JOB_ID")

    wake = _command(commands, "wake", _wake, "wake a sleeping agent")
    wake.add_argument("job_id", metavar="JOB_ID")
    wake.add_argument(
        "--top-up-microdollars", type=_non_negative_int, default=0, metavar="N", help="budget to add today"
    )
    wake.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    watch = _command(commands, "watch", _watch, "stream a job's events until it ends")
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument(
        "--after",
        type=_non_negative_int,
        metavar="SEQ",
        help="events after this sequence (0: all retained history; default: live events only)",
    )
    watch.add_argument(
        "--follow",
        action="store_true",
        help="print individual events (no snapshots or heartbeats) and reconnect when the stream drops",
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
    return parser


def _add_escalation_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    escalations = commands.add_parser("escalations", help="read and resolve escalations")
    escalation_commands = escalations.add_subparsers(
        dest="escalation_command", required=True, metavar="COMMAND"
    )

    esc_list = _command(escalation_commands, "list", _escalations_list, "list escalations, one per line")
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
    esc_get.add_argument("escalation_id", metavar="ESCALATION_ID")

    resolve = _command(escalation_commands, "resolve", _escalations_resolve, "answer an escalation")
    resolve.add_argument("escalation_id", metavar="ESCALATION_ID")
    answer = resolve.add_mutually_exclusive_group(required=True)
    answer.add_argument("--decision", default="", help="the value of one of the escalation's options")
    answer.add_argument(
        "--answer", default="", help="free text, or a JSON value, for a question that asks one"
    )
    resolve.add_argument("--guidance", default="", help="free-text guidance for the agent")
    resolve.add_argument("--digest", default="", help="approving a tool call: its arguments_digest")
    resolve.add_argument("--edit-json", default="", metavar="JSON", help="approve with these arguments")
    resolve.add_argument("--request-id", help="idempotency key (default: a random UUID)")

    approve = _command(
        escalation_commands,
        "approve",
        _escalations_approve,
        "approve a tool call waiting for approval (shows its arguments, and the diff of an edit)",
    )
    approve.add_argument("escalation_id", metavar="ESCALATION_ID")
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
    reject.add_argument("escalation_id", metavar="ESCALATION_ID")
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
    parser = commands.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    _add_connection_options(parser, with_defaults=False)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    # The options are declared on the top-level parser (with defaults) and again on every
    # command (without), so they work on either side of the command name; SUPPRESS keeps a
    # command's parser from overwriting values given before the command.
    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(os.environ.get("COFOUNDER_TARGET", DEFAULT_TARGET)),
        help=f"server host:port (env COFOUNDER_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("COFOUNDER_TOKEN")),
        help="bearer token (env COFOUNDER_TOKEN)",
    )
    group.add_argument(
        "--on-behalf-of",
        default=default(os.environ.get("COFOUNDER_ON_BEHALF_OF")),
        metavar="USER_ID",
        help="end user a trusted backend acts for (env COFOUNDER_ON_BEHALF_OF)",
    )
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="use TLS, verifying against system roots"
    )
    group.add_argument(
        "--ca-file", default=default(None), help="CA bundle (PEM) for the server; implies --tls"
    )
    group.add_argument("--cert-file", default=default(None), help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key-file", default=default(None), help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--server-name", default=default(None), help="expected name in the server certificate; implies --tls"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(10.0),
        metavar="SECONDS",
        help="deadline of unary calls (default 10; 0 for none); streams have none",
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
