"""The children the GetJobStatus benchmark starts, all stopped on any exit (Ctrl-C included)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench.harness import REPO


class Processes:
    """Every child this script starts, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session (Ctrl-C in the terminal does not reach it: we stop it)."""
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it outlives ``grace``."""
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        """Stop every child still known, newest first (servers before the Redis they use)."""
        for child in reversed(list(self._children)):
            self.stop(child, grace=5.0)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn a stop signal into KeyboardInterrupt, so that every exit path stops the children."""
    raise KeyboardInterrupt(f"signal {signum}")
