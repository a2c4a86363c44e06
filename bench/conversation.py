"""Long conversations stay cheap: what an agent whose tool returns 16 KB a call writes to SQL
per iteration as its conversation grows, what a resume after ``kill -9`` reads back, and what
an awake agent holding such a conversation costs in memory.

    .venv/bin/python -m bench.conversation                     # 4 agents x 150 iterations, SQLite
    .venv/bin/python -m bench.conversation --database postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.conversation --agents 2 --iterations 40 --runs 3

A real ``cofounder-server`` (core 0) loads the plug-in tool ``read_file`` (``--plugins
bench.plugins:register``), which returns ``--result-kb`` thousand characters (16,000: the
server's default limit for a tool result, so nothing is cut). ``--agents`` scripted jobs each
call it ``--iterations`` times with a different path, then end. Before answering, the tool
waits at a gate this script holds (a unix socket): when every agent has made its n-th call
(none is thinking or writing), the script measures, then lets them all go on. So what lies
between two measurements is exactly one iteration of each agent (the previous result fed
back, the next turn, its commit), and per iteration means per agent:

* **bytes written**: on SQLite, the frames appended to the write-ahead log (frame header +
  page, read from the ``-wal`` file: frames carrying the log's current salts); an interval in
  which SQLite restarted its log (after a checkpoint) is left out, as its count is partial. On
  PostgreSQL, the ``pg_current_wal_lsn()`` difference (cluster-wide: other databases' writes
  on the same server land in it too). Both count what the database physically wrote, so a
  rewrite of old rows would show as growth; the server's own background writes (the runner
  lease every 1.25 s) fall into whichever interval they happen in;
* **bytes stored**: the growth of the sum of every column of every table (``length`` of each
  value on SQLite, the row as text on PostgreSQL): what was appended, whatever the schema;
* **RSS** of the server (``VmRSS``), against its idle RSS (after one warm-up job, before the
  agents start).

At the last iteration (``--kill-at``), while every agent waits at the gate, the server is
killed (SIGKILL to it and its embedded Redis engine) and started again on the same data,
logging SQLAlchemy's statements and rows (``--log-level root=warning,sqlalchemy.engine=debug``).
From its start until every agent is back at the gate (resumed from its checkpoint), the
statements it ran are read back from that log: how many, and the rows and bytes each returned
(values as SQLAlchemy logs them; it shortens long values and says by how much, which is added
back). Then the agents finish and every job must be READY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from bench import harness
from bench.harness import spread
from bench.plugins import GATE_VARIABLE
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

BUDGET = 10**9
WAL_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, checkpoint sequence, salt 1, salt 2
FRAME_HEADER = 24
UNFINISHED = [job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING]


def script(iterations: int, kb: int) -> dict[str, Any]:
    """``iterations`` turns that each read another file, then an end."""
    turns: list[dict[str, Any]] = [
        {
            "text": f"Reading part {n} of the code base.",
            "tool_calls": [{"name": "read_file", "input": {"path": f"src/part_{n:03d}.py", "kb": kb}}],
            "usage": {"input_tokens": 1000, "output_tokens": 50},
        }
        for n in range(1, iterations + 1)
    ]
    return {
        "turns": [*turns, {"text": "Read everything.", "usage": {"input_tokens": 1000, "output_tokens": 5}}]
    }


# --------------------------------------------------------------------------------------------
# What the database wrote and holds


@dataclass(frozen=True)
class WalState:
    """The SQLite write-ahead log: which generation (its salts) and how many frames it holds."""

    salts: tuple[int, int]
    frames: int
    frame_bytes: int


def wal_state(path: Path) -> WalState:
    """Frames of the log's current generation, counted from the start (the server is quiet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return WalState((0, 0), 0, 0)
    if len(data) < 32:
        return WalState((0, 0), 0, 0)
    _, _, page_size, _, salt1, salt2 = WAL_HEADER.unpack_from(data, 0)
    frame_bytes = FRAME_HEADER + page_size
    frames = 0
    offset = 32
    while offset + frame_bytes <= len(data):
        if struct.unpack_from(">II", data, offset + 8) != (salt1, salt2):
            break
        frames += 1
        offset += frame_bytes
    return WalState((salt1, salt2), frames, frame_bytes)


def sqlite_stored_bytes(database: Path) -> int:
    """The sum of the lengths (in bytes) of every value in every table."""
    with harness.read_only_sqlite(database) as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        total = 0
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            if not columns:
                continue
            lengths = " + ".join(f'coalesce(length(CAST("{c}" AS BLOB)), 0)' for c in columns)
            total += int(db.execute(f'SELECT coalesce(sum({lengths}), 0) FROM "{table}"').fetchone()[0])
        return total


class Meter:
    """Reads, at a gate, what the database has written and what it stores.

    :meth:`mark` sets the point :meth:`written` counts from: marking just before the agents
    are let go leaves out what the server wrote while they were held (its background writes
    during this script's own readings).
    """

    async def mark(self) -> None:
        """Count from now."""
        raise NotImplementedError

    async def written(self) -> tuple[Any, int | None]:
        """``(state, bytes written since the mark, or None if that cannot be told)``."""
        raise NotImplementedError

    async def stored(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class SqliteMeter(Meter):
    def __init__(self, database: Path) -> None:
        self._database = database
        self._wal = Path(f"{database}-wal")
        self._last: WalState | None = None

    async def mark(self) -> None:
        self._last = await asyncio.to_thread(wal_state, self._wal)

    async def written(self) -> tuple[Any, int | None]:
        state = await asyncio.to_thread(wal_state, self._wal)
        last = self._last
        if last is None or last.salts != state.salts:
            return state, None
        return state, (state.frames - last.frames) * state.frame_bytes

    async def stored(self) -> int:
        return await asyncio.to_thread(sqlite_stored_bytes, self._database)


class PostgresMeter(Meter):
    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._last: str | None = None

    async def mark(self) -> None:
        self._last = str(await self._connection.fetchval("SELECT pg_current_wal_lsn()::text"))

    async def written(self) -> tuple[Any, int | None]:
        lsn = str(await self._connection.fetchval("SELECT pg_current_wal_lsn()::text"))
        last = self._last
        if last is None:
            return lsn, None
        difference = "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)"
        return lsn, int(await self._connection.fetchval(difference, lsn, last))

    async def stored(self) -> int:
        tables = await self._connection.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = 'public'"
        )
        total = 0
        for table in tables:
            name = table["name"]
            total += int(
                await self._connection.fetchval(
                    f"SELECT coalesce(sum(octet_length(t::text)), 0) FROM {name} t"
                )
            )
        return total

    async def close(self) -> None:
        await self._connection.close()


@contextlib.asynccontextmanager
async def store(args: argparse.Namespace, data_dir: Path) -> AsyncIterator[tuple[str, Meter]]:
    """The database the server uses (``--database-url``, "" for its SQLite file) and its meter."""
    if not args.database:
        yield "", SqliteMeter(data_dir / "cofounder.db")
        return
    import asyncpg
    from sqlalchemy.engine import make_url

    async with harness.throwaway_postgres(args.database) as url:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        meter = PostgresMeter(await asyncpg.connect(dsn))
        try:
            yield url, meter
        finally:
            await meter.close()


# --------------------------------------------------------------------------------------------
# The gate


@dataclass
class Gate:
    """The unix socket the ``read_file`` tool waits at. While ``holding``, calls are held
    until ``expected`` of them wait (every agent has made its next call); then ``arrived`` is
    set, the script measures and calls :meth:`release`. Otherwise calls pass at once."""

    path: Path
    expected: int = 0
    holding: bool = False
    held: list[asyncio.StreamWriter] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._call, path=str(self.path))

    async def _call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        if not self.holding:
            await self._go(writer)
            return
        self.held.append(writer)
        if len(self.held) >= self.expected:
            self.arrived.set()

    async def wait(self, within: float) -> None:
        """Until every agent has made its next call."""
        await asyncio.wait_for(self.arrived.wait(), within)
        self.arrived.clear()

    async def release(self) -> None:
        held, self.held = self.held, []
        for writer in held:
            await self._go(writer)

    def drop(self) -> None:
        """Forget held calls (their server is gone)."""
        for writer in self.held:
            writer.close()
        self.held = []

    @staticmethod
    async def _go(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"go\n")
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --------------------------------------------------------------------------------------------
# What the restarted server read


ROW_TRUNCATED = re.compile(r" \.\.\. \((\d+) characters truncated\) \.\.\. ")
SQLA_NOISE = ("[", "Col ", "BEGIN", "COMMIT", "ROLLBACK")


@dataclass
class Statement:
    sql: str
    rows: int = 0
    bytes: int = 0


def statements_in(log: Path, since: float, until: float) -> list[Statement]:
    """SQL statements SQLAlchemy logged between two wall-clock times, with the rows and
    (approximate) bytes each returned.

    Concurrent tasks' lines interleave; each line carries its task's context fields (the job
    a run works for), so rows go to the last statement logged with the same fields.
    """
    statements: list[Statement] = []
    last: dict[tuple[tuple[str, str], ...], Statement] = {}
    for raw in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not str(entry.get("logger", "")).startswith("sqlalchemy.engine"):
            continue
        at = datetime.fromisoformat(entry["time"]).timestamp()
        if not since <= at <= until:
            continue
        message = str(entry.pop("message"))
        context = tuple(sorted((k, str(v)) for k, v in entry.items() if k not in ("time", "level", "logger")))
        if message.startswith("Row "):
            statement = last.get(context)
            if statement is not None:
                text = message.removeprefix("Row ")
                hidden = sum(int(n) for n in ROW_TRUNCATED.findall(text))
                statement.rows += 1
                statement.bytes += len(ROW_TRUNCATED.sub("", text)) + hidden
        elif not message.startswith(SQLA_NOISE):
            last[context] = Statement(" ".join(message.split()))
            statements.append(last[context])
    return statements


def resume_reads(statements: Sequence[Statement], agents: int) -> dict[str, Any]:
    """The statements of the resume window, summed, and the ones that returned most."""
    ordered = sorted(statements, key=lambda s: s.bytes, reverse=True)
    total = sum(s.bytes for s in statements)
    return {
        "statements": len(statements),
        "selects": sum(1 for s in statements if s.sql.upper().startswith(("SELECT", "WITH"))),
        "rows": sum(s.rows for s in statements),
        "bytes": total,
        "bytes_per_agent": round(total / agents),
        # One statement per agent holding (nearly) everything read: "one query's worth".
        "share_of_bytes_in_the_largest_statement_per_agent": round(
            sum(s.bytes for s in ordered[:agents]) / total, 3
        )
        if total
        else None,
        "heaviest": [{"sql": s.sql[:160], "rows": s.rows, "bytes": s.bytes} for s in ordered[: agents + 2]],
    }


# --------------------------------------------------------------------------------------------
# One run


async def finished(stub: pb_grpc.AgentControlServiceStub, project: str, within: float) -> list[job_pb2.Job]:
    """Every job of ``project`` once none is queued or running."""
    deadline = time.monotonic() + within
    while (await stub.ListJobs(pb.ListJobsRequest(project_id=project, statuses=UNFINISHED), timeout=30)).jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs of {project} unfinished after {within:.0f} s")
        await asyncio.sleep(0.2)
    return list(
        (await stub.ListJobs(pb.ListJobsRequest(project_id=project, page_size=1000), timeout=30)).jobs
    )


async def submit(stub: pb_grpc.AgentControlServiceStub, project: str, config: dict[str, Any], n: int) -> str:
    request = pb.SubmitJobRequest(
        project_id=project,
        goal=f"Read the code base and summarise it (agent {n}).",
        daily_budget_microdollars=BUDGET,
        agent=job_pb2.AgentSpec(brain="scripted", model="bench-model"),
    )
    request.agent.config.update(config)
    return str((await stub.SubmitJob(request, timeout=60)).job.job_id)


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-conversation-"))
    gate = Gate(root / "gate.sock")
    await gate.start()
    data_dir = root / "data"
    try:
        async with store(args, data_dir) as (database_url, meter):
            return await measure(args, gate, data_dir, database_url, meter)
    finally:
        await gate.close()


async def iterations(gate: Gate, meter: Meter, pid: int, count: int, limit: float) -> list[dict[str, Any]]:
    """At each of ``count`` gates: what was written since the agents were let go, what is
    stored, the server's RSS; the agents are let go again except after the last."""
    barriers: list[dict[str, Any]] = []
    await meter.mark()
    released = time.monotonic()
    for n in range(1, count + 1):
        await gate.wait(limit)
        arrived = time.monotonic()
        state, written = await meter.written()
        barriers.append(
            {
                "iteration": n,
                "written": written,
                "stored": await meter.stored(),
                "rss_mib": round(harness.rss_mib(pid), 1),
                "seconds_running": round(arrived - released, 3),
                "seconds_held": round(time.monotonic() - arrived, 3),
                "wal": str(state),
            }
        )
        if n < count:
            await meter.mark()
            released = time.monotonic()
            await gate.release()
    return barriers


async def measure(
    args: argparse.Namespace, gate: Gate, data_dir: Path, database_url: str, meter: Meter
) -> dict[str, Any]:
    flags = ["--plugins", "bench.plugins:register", "--max-tool-calls", str(args.iterations + 100)]
    flags += ["--rate-limit-per-second", "0", "--service-rate-limit-per-second", "0"]
    if database_url:
        flags += ["--database-url", database_url]
    env = {GATE_VARIABLE: str(gate.path), "PYTHONPATH": str(harness.REPO)}
    server = harness.ServerProcess(data_dir, flags, core=harness.SERVER_CORE, env=env)
    kill_at = args.kill_at or args.iterations
    result: dict[str, Any] = {"database": "postgresql" if args.database else "sqlite"}
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            await submit(stub, "bench-conversation-warmup", script(1, 1), 0)
            await finished(stub, "bench-conversation-warmup", 60)
            await asyncio.sleep(1.0)
            idle_rss = harness.rss_mib(server.pid)
            gate.expected, gate.holding = args.agents, True
            config = script(args.iterations, args.result_kb)
            for n in range(args.agents):
                await submit(stub, "bench-conversation", config, n)
            barriers = await iterations(gate, meter, server.pid, kill_at, args.limit)
        # Every agent is at the gate with its kill_at-th call in flight: crash the server.
        await server.kill()
        gate.drop()
        server.log_level = "root=warning,sqlalchemy.engine=debug"
        restarted = time.time()
        restart_seconds = await server.start()
        await gate.wait(args.limit)
        resumed = time.time()
        resumed_rss = harness.rss_mib(server.pid)
        gate.holding = False
        await gate.release()
        async with grpc.aio.insecure_channel(server.address) as channel:
            jobs = await finished(pb_grpc.AgentControlServiceStub(channel), "bench-conversation", args.limit)
    finally:
        await server.stop()
    statuses = [job_pb2.JobStatus.Name(job.status) for job in jobs]
    result["jobs_ready"] = statuses.count("JOB_STATUS_READY")
    result["jobs"] = len(statuses)
    result["failures"] = [job.outcome_detail[:200] for job in jobs if job.status != job_pb2.JOB_STATUS_READY]
    result.update(per_iteration(barriers, args))
    first, tenth, last = barriers[0], barriers[min(9, len(barriers) - 1)], barriers[-1]
    result["memory"] = {
        "rss_idle_mib": round(idle_rss, 1),
        "rss_at_iteration_1_mib": first["rss_mib"],
        "rss_at_iteration_10_mib": tenth["rss_mib"],
        f"rss_at_iteration_{last['iteration']}_mib": last["rss_mib"],
        "kib_per_awake_agent": round((last["rss_mib"] - idle_rss) * 1024 / args.agents),
        "kib_per_agent_per_iteration_10_on": round(
            (last["rss_mib"] - tenth["rss_mib"]) * 1024 / args.agents / max(1, last["iteration"] - 10), 2
        ),
        "rss_after_resume_mib": round(resumed_rss, 1),
    }
    result["resume"] = {
        "restart_until_serving_seconds": round(restart_seconds, 2),
        "restart_until_all_agents_at_their_tool_seconds": round(resumed - restarted, 2),
        **resume_reads(statements_in(server.log_path, restarted, resumed), args.agents),
    }
    result["barriers"] = barriers
    return result


def per_iteration(barriers: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Bytes written and stored per agent-iteration from iteration 10 on: the spread, and
    the first tenth against the last tenth (flat: about 1.0)."""
    written: list[tuple[int, float]] = []
    stored: list[tuple[int, float]] = []
    for before, after in itertools.pairwise(barriers):
        n = after["iteration"]
        if n < 10:
            continue
        if after["written"] is not None:
            written.append((n, after["written"] / args.agents))
        stored.append((n, (after["stored"] - before["stored"]) / args.agents))

    def figures(series: list[tuple[int, float]]) -> dict[str, Any]:
        if not series:
            return {}
        values = [v for _, v in series]
        tenth = max(1, len(series) // 10)
        early, late = statistics.median(values[:tenth]), statistics.median(values[-tenth:])
        return {
            "iterations": len(values),
            "median": round(statistics.median(values)),
            "min": round(min(values)),
            "max": round(max(values)),
            "p90": round(harness.percentile(values, 0.9)),
            "first_tenth_median": round(early),
            "last_tenth_median": round(late),
            "last_over_first": round(late / early, 2) if early else None,
            "by_iteration": [[n, round(v)] for n, v in series],
        }

    return {
        "bytes_written_per_iteration": figures(written),
        "intervals_left_out_for_a_wal_restart": sum(
            1 for b in barriers[1:] if b["written"] is None and b["iteration"] >= 10
        ),
        "bytes_stored_per_iteration": figures(stored),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--agents", type=int, default=4, help="agents holding such a conversation (default 4)"
    )
    parser.add_argument("--iterations", type=int, default=150, help="tool calls per agent (default 150)")
    parser.add_argument("--result-kb", type=int, default=16, help="thousands of characters per result (16)")
    parser.add_argument(
        "--kill-at", type=int, default=0, help="kill -9 at this iteration (default: the last)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs, for the spread (default 1)")
    parser.add_argument("--database", default="", help="PostgreSQL server URL (a throwaway database)")
    parser.add_argument("--limit", type=float, default=120.0, help="longest wait at any gate, seconds")
    parser.add_argument(
        "--json-out", default="", help="results file (default bench/results/conversation-<time>.json)"
    )
    args = parser.parse_args()
    if harness.two_cores():
        os.sched_setaffinity(0, {harness.LOAD_CORE})
    runs = []
    for number in range(args.runs):
        run = asyncio.run(one_run(args))
        runs.append(run)
        written, stored = run["bytes_written_per_iteration"], run["bytes_stored_per_iteration"]
        print(
            f"run {number + 1}: written per iteration {written.get('median', 0):,} B median "
            f"({written.get('min', 0):,}-{written.get('max', 0):,}), last/first tenth "
            f"{written.get('last_over_first')}; stored {stored.get('median', 0):,} B "
            f"(last/first {stored.get('last_over_first')}); resume read {run['resume']['rows']:,} rows, "
            f"{run['resume']['bytes']:,} B in {run['resume']['statements']} statements; "
            f"{run['memory']['kib_per_awake_agent']:,} KiB per awake agent; "
            f"{run['jobs_ready']}/{run['jobs']} READY",
            flush=True,
        )
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "json_out"},
        "runs": runs,
    }
    out = harness.write_result(result, args.json_out, default_name="conversation")
    print(f"CPU: {result['machine']['cpu_model']}; {args.agents} agents x {args.iterations} iterations x "
          f"{args.result_kb} KB, {runs[0]['database']}")  # fmt: skip
    print(
        "bytes written per iteration (median over runs of the run medians): "
        + spread([r["bytes_written_per_iteration"].get("median", 0) for r in runs])
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
