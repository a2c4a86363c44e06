"""Reading a brain's ``AgentSpec.config`` with errors that name the offending field.

The config arrives through a ``google.protobuf.Struct``, where every number is a float:
whole numbers are therefore accepted as floats too, fractions and booleans are not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.plugin_errors import PluginConfigError

_PLAIN_KEY_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def member(field: str, key: str) -> str:
    """The path of ``key`` inside ``field``: ``field.key``, or ``field['k e y']`` quoted and
    escaped when the key is not a plain name, so no path carries raw control characters."""
    return f"{field}.{key}" if _PLAIN_KEY_RE.fullmatch(key) else f"{field}[{key!r}]"


def check_keys(value: Mapping[str, Any], allowed: frozenset[str], field: str) -> None:
    """Reject keys outside ``allowed``: a misspelt option should fail, not be ignored."""
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise PluginConfigError(
            f"unknown option {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})",
            field=member(field, unknown[0]),
        )


def as_mapping(value: object, field: str) -> Mapping[str, Any]:
    """``value`` as an object with string keys."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise PluginConfigError("must be an object", field=field)
    return value


def as_list(value: object, field: str) -> list[Any]:
    """``value`` as a list."""
    if not isinstance(value, list):
        raise PluginConfigError("must be a list", field=field)
    return value


def as_str(value: object, field: str, *, non_empty: bool = False) -> str:
    """``value`` as a string, optionally required to be non-empty."""
    if not isinstance(value, str):
        raise PluginConfigError("must be a string", field=field)
    if non_empty and not value.strip():
        raise PluginConfigError("must not be empty", field=field)
    return value


def as_bool(value: object, field: str) -> bool:
    """``value`` as a boolean."""
    if not isinstance(value, bool):
        raise PluginConfigError("must be true or false", field=field)
    return value


def as_int(value: object, field: str, *, minimum: int) -> int:
    """``value`` as a whole number of at least ``minimum``."""
    if isinstance(value, float) and value.is_integer():  # False for inf and nan too
        value = int(value)
    # bool is an int subclass; ``true`` as a token count is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PluginConfigError("must be a whole number", field=field)
    if value < minimum:
        raise PluginConfigError(f"must be at least {minimum}", field=field)
    return value


_CONFIG = "agent.config"
_CHAT_KEYS = frozenset({"system", "max_tokens"})


def chat_options(
    spec: AgentSpec, default_max_tokens: int, *, brain: str, example_model: str
) -> tuple[str, int]:
    """The system prompt and output-token limit of a model API brain's ``spec``
    (``{"system": ..., "max_tokens": ...}``, both optional), which must name a model."""
    config = as_mapping(spec.config, _CONFIG)
    check_keys(config, _CHAT_KEYS, _CONFIG)
    system = as_str(config.get("system", ""), f"{_CONFIG}.system")
    max_tokens = as_int(config.get("max_tokens", default_max_tokens), f"{_CONFIG}.max_tokens", minimum=1)
    if not spec.model.strip():
        raise PluginConfigError(f"the {brain} brain needs a model, e.g. {example_model}", field="agent.model")
    return system, max_tokens
