"""The cofounder control plane server: a gRPC API over autonomous agent jobs."""

__version__ = "0.1.0"
