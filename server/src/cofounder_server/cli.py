"""The ``cofounder-server`` command (and ``cofounder-server hash-token`` and ``migrate``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cofounder_server.app import Application
from cofounder_server.auth.tokens import hash_token
from cofounder_server.causes import describe_cause
from cofounder_server.config import ENV_PREFIX, Settings, load_settings
from cofounder_server.domain.errors import Unavailable
from cofounder_server.observability import logs
from cofounder_server.store.database import async_url
from cofounder_server.store.migrate import upgrade_to_head
from cofounder_server.workers import check_workers, supervise

HASH_TOKEN_USAGE = """usage: cofounder-server hash-token < token-file

Read one bearer token from standard input and print its SHA-256 hex digest: the `sha256`
value of a [[tokens]] entry in the --auth-tokens-file. The token never appears as an
argument, so it stays out of shell history and the process list."""


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain (``--drain-pause-seconds`` NOT_SERVING first)
    and stop. SIGHUP reloads the principals file."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start-up: health answers SERVING before the executor has started, and a SIGTERM
    # in between must still drain rather than kill the process.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    app = await Application.start(settings)
    # What start-up allocated (modules, protobuf descriptors, SQL metadata: ~100,000
    # objects) lives as long as the process. Frozen, a full collection no longer walks it:
    # the pause drops from ~60-80 ms, which every request in flight waited out, to a few ms.
    gc.collect()
    gc.freeze()
    # Reloading swaps the credentials for new calls; connections and open streams stay up.
    loop.add_signal_handler(signal.SIGHUP, app.security.reload)
    await stop_requested.wait()
    await app.stop(pause_seconds=settings.drain_pause_seconds)


def hash_token_command(argv: Sequence[str], stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """``cofounder-server hash-token``: token on stdin, digest on stdout; 2 on bad usage or token."""
    if argv:
        print(HASH_TOKEN_USAGE, file=stderr if argv[0] not in ("-h", "--help") else stdout)
        return 0 if argv[0] in ("-h", "--help") else 2
    token = stdin.read().removesuffix("\n").removesuffix("\r")
    try:
        print(hash_token(token), file=stdout)
    except ValueError as error:
        print(f"cofounder-server hash-token: {error}", file=stderr)
        return 2
    return 0


def _migrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cofounder-server migrate",
        description="Create or upgrade the SQL schema to the newest revision, then exit. The "
        "server does the same at start-up under a lock; run this first in a deployment so a "
        "failing migration stops the rollout before any replica is replaced.",
    )
    parser.add_argument(
        "--database-url",
        metavar="DATABASE_URL",
        help=f"SQLAlchemy URL of the shared database (default: ${ENV_PREFIX}DATABASE_URL)",
    )
    return parser


def migrate_command(argv: Sequence[str], environ: Mapping[str, str], stdout: TextIO, stderr: TextIO) -> int:
    """``cofounder-server migrate``: 0 once the schema is at head; 1 if the database cannot be
    reached; 2 on bad usage (no URL, or one that cannot be parsed)."""
    parser = _migrate_parser()
    args = parser.parse_args(argv)
    url = args.database_url or environ.get(f"{ENV_PREFIX}DATABASE_URL", "")
    if not url:
        print(
            f"cofounder-server migrate: needs --database-url or {ENV_PREFIX}DATABASE_URL (a server "
            "on its embedded SQLite file migrates it at start-up)",
            file=stderr,
        )
        return 2
    try:
        async_url(url)
    except (ArgumentError, ValueError) as error:
        print(f"cofounder-server migrate: invalid --database-url: {error}", file=stderr)
        return 2
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        before, after = asyncio.run(upgrade_to_head(url))
    except Unavailable as error:
        cause = describe_cause(error)
        print(f"cofounder-server migrate: cannot reach the database {shown}: {cause}", file=stderr)
        return 1
    if before == after:
        print(f"schema of {shown} already at revision {after}", file=stdout)
    else:
        print(f"schema of {shown} upgraded from revision {before or '(none)'} to {after}", file=stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, start the server, and block until it stops."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hash-token"]:
        return hash_token_command(args[1:], sys.stdin, sys.stdout, sys.stderr)
    if args[:1] == ["migrate"]:
        return migrate_command(args[1:], os.environ, sys.stdout, sys.stderr)
    settings = load_settings(args)
    if settings.log_format not in logs.FORMATS:
        raise SystemExit(
            f"invalid --log-format {settings.log_format!r}: expected one of {', '.join(logs.FORMATS)}"
        )
    try:
        logs.configure(settings.log_level, settings.log_format, sys.stderr)
    except ValueError as error:
        raise SystemExit(f"invalid --log-level {error}") from error
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    check_workers(settings)
    try:
        runner(supervise(args, settings) if settings.workers > 1 else serve(settings))
    except SystemExit as refusal:
        # A refusal (bad configuration, data directory in use, ...) is its one-line message.
        if settings.debug:
            traceback.print_exception(refusal)
        raise
    except Exception as error:
        if settings.debug:
            traceback.print_exception(error)
        message = " ".join(str(error).split())
        print(
            f"cofounder-server: {type(error).__name__}: {message}"
            + ("" if settings.debug else " (--debug prints the traceback)"),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
