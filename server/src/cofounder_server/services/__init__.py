"""Use cases: the orchestration of storage, the live layer and fan-out behind each RPC."""
