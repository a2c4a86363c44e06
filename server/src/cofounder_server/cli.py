"""The ``cofounder-server`` command."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from cofounder_server.app import Application
from cofounder_server.config import Settings, load_settings


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    app = await Application.start(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await stop_requested.wait()
    await app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, start the server, and block until it stops."""
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
