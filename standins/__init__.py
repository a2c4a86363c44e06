"""Stand-ins for the external services the server talks to, served for real on loopback.

Tests and benchmarks use them in place of a provider: :mod:`standins.model_api` answers the
Anthropic Messages API and the OpenAI Chat Completions API; :mod:`standins.postgres` makes
throwaway databases on a real PostgreSQL server.
"""
