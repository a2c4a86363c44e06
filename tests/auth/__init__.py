"""Authentication, tenancy, limits and TLS against real servers."""
