"""Paths of the deployment files, and the tools the test extra installs beside Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """The executable ``name`` from this interpreter's environment (where the test extra put
    it), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed: pip install -e './server[test]'"
    return found
