"""Runs a markdown session's commands in a shell against a real server and checks each output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from tests.docs.markdown_sessions import Bindings, Command, Mismatch, Session, items, match_output, report

# Generous: the machine running the suite may be loaded. Matching output ends a wait at once.
COMMAND_DEADLINE = 30.0
# The port the documents show; commands reach the test server instead.
DOCUMENTED_ADDRESSES = ("localhost:50051", "127.0.0.1:50051")


@dataclass
class _Running:
    """A started command and everything it has printed so far (stdout and stderr interleaved)."""

    command: Command
    process: asyncio.subprocess.Process
    output: bytearray = field(default_factory=bytearray)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def read_until(self, done: Callable[[str], bool], deadline: float) -> bool:
        """Read until ``done(output)`` holds (True) or the command has ended or the deadline
        passed (False)."""
        assert self.process.stdout is not None
        while not done(self.text):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                chunk = await asyncio.wait_for(self.process.stdout.read(65536), remaining)
            except TimeoutError:
                return False
            if not chunk:
                await self.process.wait()
                return done(self.text)
            self.output += chunk
        return True

    async def stop(self) -> None:
        if self.process.returncode is None:
            # The command runs in a session of its own: end its whole process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


class SessionRunner:
    """One shell session: the commands of a :class:`Session`, in order, against ``port``."""

    def __init__(self, port: int, workdir: Path) -> None:
        self._port = port
        self._workdir = workdir
        self._bindings = Bindings()
        self._status = 0
        bin_dir = str(Path(sys.executable).parent)  # grpcurl, buf and cofounder, as installed
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
        self._env["PATH"] = os.pathsep.join([bin_dir, self._env.get("PATH", "")])
        self._env["COFOUNDER_TARGET"] = f"127.0.0.1:{port}"

    async def run(self, session: Session) -> None:
        """Run every command; raise ``AssertionError`` with a diff at the first drift."""
        blocks = [list(commands) for _, commands in groupby(session.commands, key=lambda c: c.block)]
        in_background: list[_Running] = []
        try:
            for block in blocks:
                started_here: list[_Running] = []
                for command in block:
                    if "background" in command.options:
                        started_here.append(await self._start_background(command))
                    else:
                        await self._run(command)
                for running in in_background:
                    await self._finish_stream(running)
                in_background = started_here
            for running in in_background:
                await self._finish_stream(running)
        finally:
            for running in in_background:
                await running.stop()

    # --- one command -------------------------------------------------------------------------

    async def _start(self, command: Command) -> _Running:
        script = self._bindings.apply(command.text)
        for address in DOCUMENTED_ADDRESSES:
            script = script.replace(address, f"127.0.0.1:{self._port}")
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            # `$?` in a command is the status of the one before, as in a terminal.
            f"(exit {self._status})\n{script}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            cwd=self._workdir,
            start_new_session=True,
        )
        return _Running(command, process)

    async def _run(self, command: Command) -> None:
        if "stream" in command.options:
            await self._finish_stream(await self._start(command))
            return
        deadline = time.monotonic() + COMMAND_DEADLINE
        while True:
            running = await self._start(command)
            try:
                output, _ = await asyncio.wait_for(
                    running.process.communicate(), max(deadline - time.monotonic(), 1.0)
                )
            except TimeoutError:
                raise AssertionError(
                    report(command, "", f"still running after {COMMAND_DEADLINE} s")
                ) from None
            finally:
                await running.stop()
            text = output.decode(errors="replace")
            self._status = running.process.returncode or 0
            if not command.output:
                assert self._status == 0, report(command, text, f"exit status {self._status}")
                return
            try:
                self._check(command, text)
                return
            except Mismatch as error:
                if "wait" not in command.options or time.monotonic() > deadline:
                    raise AssertionError(report(command, text, str(error))) from None
            await asyncio.sleep(0.05)

    async def _start_background(self, command: Command) -> _Running:
        """Start a stream and return once its first shown message has arrived."""
        running = await self._start(command)
        first = items("\n".join(command.output), expected=True)[:1]
        try:
            if not await running.read_until(
                lambda text: self._matches_prefix(first, text, keep=False),
                time.monotonic() + COMMAND_DEADLINE,
            ):
                problem = "its first message never arrived"
                try:
                    match_output(first, items(running.text, expected=False)[:1], _copy(self._bindings))
                except Mismatch as error:
                    problem = str(error)
                raise AssertionError(report(command, running.text, problem))
        except BaseException:
            await running.stop()
            raise
        return running

    async def _finish_stream(self, running: _Running) -> None:
        """Read a stream until everything shown has arrived, then stop it."""
        command = running.command
        expected = items("\n".join(command.output), expected=True)
        try:
            if await running.read_until(
                lambda text: self._matches_prefix(expected, text, keep=False),
                time.monotonic() + COMMAND_DEADLINE,
            ):
                self._matches_prefix(expected, running.text, keep=True)
                self._status = 0
                return
            try:
                self._check(command, running.text)
            except Mismatch as error:
                raise AssertionError(report(command, running.text, str(error))) from None
            raise AssertionError(report(command, running.text, "the stream ended early"))
        finally:
            await running.stop()

    # --- comparing ---------------------------------------------------------------------------

    def _check(self, command: Command, text: str) -> None:
        expected = items("\n".join(command.output), expected=True)
        match_output(expected, items(text, expected=False), self._bindings)

    def _matches_prefix(self, expected: list[object], text: str, *, keep: bool) -> bool:
        """Whether the first messages of a stream's output match ``expected`` (binding its ids
        when ``keep``)."""
        actual = items(text, expected=False)
        for count in range(1, len(actual) + 1):
            bindings = self._bindings if keep else _copy(self._bindings)
            try:
                match_output(expected, actual[:count], bindings)
            except Mismatch:
                continue
            return True
        return False


def _copy(bindings: Bindings) -> Bindings:
    copied = Bindings()
    copied.ids = dict(bindings.ids)
    return copied
