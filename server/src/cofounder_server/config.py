"""Server settings: defaults, then environment variables, then command-line flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path

ENV_PREFIX = "COFOUNDER_"


@dataclass(frozen=True)
class Settings:
    """Everything the composition root needs to build a server.

    Each field can be set by the environment variable ``COFOUNDER_<FIELD>`` (upper case) or
    by the flag ``--<field>`` (dashes for underscores); flags win over the environment.
    """

    listen: str = field(default="127.0.0.1:50051", metadata={"help": "HOST:PORT to serve gRPC on"})
    reuse_port: bool = field(
        default=False,
        metadata={
            "help": "let several server processes serve the same --listen port (SO_REUSEPORT: the kernel "
            "spreads connections over them); each needs its own --data-dir, and all share --redis-url "
            "and --database-url"
        },
    )
    data_dir: Path = field(
        default=Path("cofounder-data"),
        metadata={"help": "directory for the SQLite file and the embedded Redis socket"},
    )
    redis_url: str = field(
        default="",
        metadata={"help": "external Redis URL (redis://, rediss://, unix://); empty starts an embedded one"},
    )
    database_url: str = field(
        default="",
        metadata={"help": "SQLAlchemy URL (sqlite / postgresql); empty uses DATA_DIR/cofounder.db"},
    )
    log_level: str = field(
        default="INFO",
        metadata={
            "help": "DEBUG, INFO, WARNING or ERROR, or per logger: cofounder_server.executor=debug,root=info"
        },
    )
    log_format: str = field(
        default="auto",
        metadata={"help": "auto (JSON lines unless stderr is a terminal), json or text"},
    )
    metrics_listen: str = field(
        default="",
        metadata={"help": "HOST:PORT to serve Prometheus metrics on (/metrics); empty: metrics off"},
    )
    otlp_endpoint: str = field(
        default="",
        metadata={
            "help": "OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317; needs the "
            "otel extra); empty: tracing off"
        },
    )
    debug: bool = field(
        default=False,
        metadata={
            "help": "print the traceback of an error that stops the server (without it: one line on stderr)"
        },
    )
    shutdown_grace_seconds: float = field(
        default=10.0, metadata={"help": "how long in-flight calls may finish on SIGTERM"}
    )
    drain_pause_seconds: float = field(
        default=5.0,
        metadata={
            "help": "on SIGTERM, how long health reports NOT_SERVING while the server still serves, "
            "before open streams are ended and in-flight calls finish (one health probe period, so "
            "load balancers stop sending new calls first)"
        },
    )
    max_connection_age_seconds: float = field(
        default=600.0,
        metadata={
            "help": "a client connection older than this is asked to reconnect (HTTP/2 GOAWAY, +-10%% "
            "jitter), so long-lived connections spread over replicas; 0: never"
        },
    )
    max_connection_age_grace_seconds: float = field(
        default=30.0,
        metadata={
            "help": "how long calls on a connection past --max-connection-age-seconds may finish before "
            "it is closed (open streams then end with UNAVAILABLE and resume from their cursor)"
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes serving --listen together (SO_REUSEPORT), supervised by this "
            "one: a worker that dies is restarted; SIGTERM drains them all"
        },
    )
    health_check_interval_seconds: float = field(
        default=2.0,
        metadata={
            "help": "how often Redis and SQL are probed (and, while SQL writes fail, a write is tried) "
            "for the health service"
        },
    )
    max_message_bytes: int = field(
        default=1024 * 1024, metadata={"help": "largest request message accepted, in bytes"}
    )
    status_cache_entries: int = field(
        default=100_000, metadata={"help": "live-key cache size (entries) for GetJobStatus"}
    )
    auth_tokens_file: str = field(
        default="",
        metadata={
            "help": "principals file (TOML: token hashes and certificate names, each with a principal "
            "and role); empty: no authentication, one local principal, loopback only. Reloaded on SIGHUP"
        },
    )
    tls_cert_file: str = field(default="", metadata={"help": "PEM server certificate chain; enables TLS"})
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of --tls-cert-file"})
    tls_client_ca_file: str = field(
        default="",
        metadata={"help": "PEM CA bundle for client certificates; enables and requires mutual TLS"},
    )
    allow_unauthenticated_non_loopback: bool = field(
        default=False,
        metadata={
            "help": "DANGEROUS: serve a non-loopback address without authentication (only behind a "
            "proxy that authenticates)"
        },
    )
    rate_limit_per_second: float = field(
        default=50.0, metadata={"help": "requests per second per principal (token bucket); 0 disables"}
    )
    rate_limit_burst: int = field(default=100, metadata={"help": "requests a principal may send at once"})
    max_streams_per_principal: int = field(
        default=50, metadata={"help": "open server streams per principal; 0 disables"}
    )
    service_rate_limit_per_second: float = field(
        default=200.0,
        metadata={
            "help": "requests per second of one service across all the users it acts for (token "
            "bucket); 0 disables"
        },
    )
    service_rate_limit_burst: int = field(
        default=200, metadata={"help": "requests a service may send at once across its users"}
    )
    max_streams_per_service: int = field(
        default=1000, metadata={"help": "open server streams of one service across its users; 0 disables"}
    )
    rate_limit_tracked_principals: int = field(
        default=100_000,
        metadata={
            "help": "request rates held in memory at most; past it, principals not seen within the "
            "last burst/rate seconds wait (RATE_LIMITED) until a held rate has refilled"
        },
    )
    heartbeat_interval_seconds: float = field(
        default=15.0, metadata={"help": "an idle watch stream sends a heartbeat after this long"}
    )
    event_retention_events: int = field(
        default=100_000,
        metadata={
            "help": "newest events kept per job log (and in the escalation feed); older cursors "
            "are OUT_OF_RANGE"
        },
    )
    watch_buffer_events: int = field(
        default=2048,
        metadata={
            "help": "recent events held in memory per watched stream; a live watcher further "
            "behind is ended (UNAVAILABLE, WATCHER_TOO_SLOW) and resumes"
        },
    )
    plugins: str = field(
        default="",
        metadata={
            "help": "comma-separated module:attribute import paths of plug-in register(registry) "
            "callables; one that fails to load stops start-up"
        },
    )
    scripted_turns_dir: str = field(
        default="",
        metadata={
            "help": "directory the scripted brain's turns_file may read from; empty disables turns_file"
        },
    )
    anthropic_base_url: str = field(
        default="",
        metadata={"help": "Anthropic API base URL; empty uses the SDK default (or ANTHROPIC_BASE_URL)"},
    )
    # repr=False: the key must not appear wherever the settings are printed or logged.
    anthropic_api_key: str = field(
        default="",
        repr=False,
        metadata={"help": "Anthropic API key; empty lets the SDK find one (e.g. ANTHROPIC_API_KEY)"},
    )
    anthropic_max_tokens: int = field(
        default=8192, metadata={"help": "output-token limit of each Anthropic call (max_tokens)"}
    )
    anthropic_timeout_seconds: float = field(
        default=300.0, metadata={"help": "timeout of each Anthropic call; the executor retries, the SDK not"}
    )
    openai_base_url: str = field(
        default="",
        metadata={
            "help": "OpenAI-compatible API base URL, e.g. http://127.0.0.1:8000/v1 (vLLM) or "
            "http://127.0.0.1:11434/v1 (Ollama); empty uses the SDK default (or OPENAI_BASE_URL)"
        },
    )
    # repr=False: the key must not appear wherever the settings are printed or logged.
    openai_api_key: str = field(
        default="",
        repr=False,
        metadata={
            "help": "API key of the openai brain; empty lets the SDK read OPENAI_API_KEY (a server "
            "that checks no key accepts any value)"
        },
    )
    openai_max_tokens: int = field(
        default=8192,
        metadata={"help": "output-token limit of each openai brain call (sent as max_completion_tokens)"},
    )
    openai_timeout_seconds: float = field(
        default=300.0,
        metadata={"help": "timeout of each openai brain call; the executor retries, the SDK not"},
    )
    model_max_connections: int = field(
        default=10_000,
        metadata={
            "help": "connections each model API client (one per provider, base URL and key, shared by "
            "every agent) may hold open; calls beyond wait for one; 0: no cap"
        },
    )
    model_concurrency: str = field(
        default="",
        metadata={
            "help": "model calls in flight per model at most, e.g. claude-sonnet-4-5=200,gpt-4.1=100; "
            "calls beyond wait in order; empty: no limit"
        },
    )
    model_backoff_seconds: float = field(
        default=2.0,
        metadata={
            "help": "after a 429, 529 or 503 without retry-after, how long every call through that "
            "provider key waits (with retry-after: as long as it says)"
        },
    )
    executor_enabled: bool = field(
        default=True,
        metadata={"help": "run agents in this process (false: serve the API only, as a read replica would)"},
    )
    awake_memory_mib: int = field(
        default=1024,
        metadata={
            "help": "memory the awake agents of this process may hold, by estimate (an agent waiting on a "
            "model call with a short conversation ~64 KiB, plus 2.5x its conversation): agents are admitted "
            "while it lasts and the rest wait in order; parked agents (sleeping, waiting for a person) "
            "hold none"
        },
    )
    max_running_jobs: int = field(
        default=0,
        metadata={
            "help": "at most this many agents awake at once, on top of --awake-memory-mib (0: no count cap)"
        },
    )
    max_tool_calls: int = field(
        default=150, metadata={"help": "tool calls a job may make before it ends with ITERATION_LIMIT"}
    )
    tool_result_limit_chars: int = field(
        default=16_000,
        metadata={
            "help": "longer tool results (and thinking text) are cut in the middle to this many characters"
        },
    )
    price_table: str = field(
        default="",
        metadata={
            "help": 'model prices as JSON or a path to a JSON file: {MODEL: {"input": N, "output": N}} in '
            'microdollars per million tokens, with a "default" entry; empty: built-in table'
        },
    )
    runner_id: str = field(
        default="",
        metadata={
            "help": "this process's executor identity in job leases; empty: one kept in DATA_DIR/runner-id"
        },
    )
    lease_seconds: float = field(
        default=5.0,
        metadata={
            "help": "an executor that has not renewed its runner lease for this long is presumed dead and "
            "its jobs are taken over (renewed every quarter of it, one UPDATE however many jobs it holds)"
        },
    )
    claim_interval_seconds: float = field(
        default=1.0, metadata={"help": "how often the executor looks for jobs to claim"}
    )
    sweep_interval_seconds: float = field(
        default=5.0,
        metadata={
            "help": "how often the executor sweeps for lost notifications (jobs changed in SQL, wake_signal "
            "keys of its sleeping agents): one sweep per process, not per agent"
        },
    )
    wake_jitter_seconds: float = field(
        default=0.0,
        metadata={
            "help": "spread each parked agent's wake time by a random delay up to this long (agents "
            "sharing a time, e.g. midnight, then resume in a random but fair order)"
        },
    )
    brain_retries: int = field(
        default=3, metadata={"help": "attempts of a retryable brain error before the job fails (MODEL_ERROR)"}
    )
    brain_retry_delay_seconds: float = field(
        default=1.0, metadata={"help": "delay before retrying a failed brain call (times the attempt)"}
    )
    provider_wait_limit_seconds: float = field(
        default=900.0,
        metadata={
            "help": "how long one model call may wait, in all, for a provider that asked to slow down "
            "(429/529 with retry-after: waited for, not counted as failures) before the job fails"
        },
    )
    tool_error_attempts: int = field(
        default=3,
        metadata={
            "help": "attempts of a retryable tool error (same signature) before it escalates to a person; "
            "errors retrying cannot fix escalate at once"
        },
    )
    tool_retry_delay_seconds: float = field(
        default=1.0, metadata={"help": "delay before retrying a failed tool call (times the attempt)"}
    )
    max_escalations_per_job: int = field(
        default=5, metadata={"help": "escalations a job may raise; the next ends it with ESCALATION_LIMIT"}
    )

    @property
    def effective_database_url(self) -> str:
        """The database URL in force: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'cofounder.db').resolve()}"


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind in ("Path", Path):
        return Path(raw)
    if kind in ("float", float):
        return float(raw)
    if kind in ("int", int):
        return int(raw)
    if kind in ("bool", bool):
        # bool("false") is True: accept only unambiguous spellings.
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    return raw


def from_environment(environ: Mapping[str, str], base: Settings | None = None) -> Settings:
    """Settings with every ``COFOUNDER_*`` variable in ``environ`` applied."""
    settings = base or Settings()
    changes: dict[str, object] = {}
    for f in fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            try:
                changes[f.name] = _convert(f.name, raw)
            except ValueError as exc:
                raise SystemExit(f"invalid {ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
    return replace(settings, **changes)  # type: ignore[arg-type]


def server_version() -> str:
    """The installed ``cofounder-server`` package's version."""
    try:
        return metadata.version("cofounder-server")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``cofounder-server`` argument parser, one flag per setting."""
    parser = argparse.ArgumentParser(
        prog="cofounder-server",
        description="Run the cofounder control plane gRPC server.",
        epilog="Every flag can also be set with the environment variable COFOUNDER_<NAME>.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {server_version()}")
    for f in fields(Settings):
        default = f.default
        # A switch may be given bare (``--flag``) or with a value (``--flag false``).
        switch = {"nargs": "?", "const": "true"} if f.type in ("bool", bool) else {}
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} (default: {default})",
            **switch,  # type: ignore[arg-type]
        )
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags over environment over defaults."""
    args = build_parser().parse_args(argv)
    settings = from_environment(os.environ if environ is None else environ)
    changes: dict[str, object] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name)
        if raw is not None:
            try:
                changes[f.name] = _convert(f.name, raw)
            except ValueError as exc:
                raise SystemExit(f"invalid --{f.name.replace('_', '-')} {raw!r}: {exc}") from exc
    return replace(settings, **changes)  # type: ignore[arg-type]
