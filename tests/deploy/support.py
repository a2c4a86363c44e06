"""Paths of the deployment files, and the tools the test extra installs beside Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HANDOVER_SECONDS = 10.0
"""What a stop takes after the agents stopped, with room: handing the jobs over (one
transaction), committed events reaching Redis (up to 2 s), the Redis and SQL pools closing."""


def tool(name: str) -> str:
    """The executable ``name`` from this interpreter's environment (where the test extra put
    it), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed: pip install -e './server[test]'"
    return found
