"""``python -m cofounder_server`` runs the server."""

from cofounder_server.cli import main

raise SystemExit(main())
