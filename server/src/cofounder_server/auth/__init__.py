"""Authentication, per-principal limits and TLS of the gRPC server."""
