"""Event payloads written as JSON in one call read back as the payloads, in the text the
generic form gives."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from cofounder_server.domain.events import PAYLOAD_TYPES, payload_from_json, payload_json, to_json
from cofounder_server.jsontext import dumps, encode_object

_TIMES = (datetime(2026, 12, 5, 19, 44, 0, 123456, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def _sample(hint: Any, variant: int) -> Any:
    """A value of ``hint``: ``variant`` 0 fills optional fields, 1 leaves them empty."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return None if variant else _sample(options[0], variant)
    if origin is tuple:
        return tuple(_sample(typing.get_args(hint)[0], variant) for _ in range(2 - variant))
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{field.name: _sample(hints[field.name], variant) for field in dataclasses.fields(hint)})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1 if variant else 0]
    samples: dict[Any, Any] = {
        bool: variant == 0,
        int: [7, -(2**40)][variant],
        str: ['quotes " \\ é ☃ 𝄞 \x00\n', ""][variant],
        datetime: _TIMES[variant],
    }
    return samples[hint]


CASES = [
    pytest.param(cls, variant, id=f"{name}-{variant}")
    for name, cls in sorted(PAYLOAD_TYPES.items())
    for variant in (0, 1)
]


@pytest.mark.parametrize(("cls", "variant"), CASES)
def test_a_payload_is_the_generic_forms_text_and_reads_back(cls: type, variant: int) -> None:
    payload = _sample(cls, variant)
    text = payload_json(payload).text
    assert text == dumps(to_json(payload))
    assert payload_from_json(cls.TYPE, orjson.loads(text)) == payload


def test_what_orjson_refuses_takes_the_generic_form() -> None:
    @dataclasses.dataclass(frozen=True)
    class Big:
        count: int

    assert encode_object(Big(2**70), to_json).text == '{"count":1180591620717411303424}'


def test_encoded_text_is_stored_as_it_is() -> None:
    encoded = encode_object({"a": [1, "b"]}, to_json)
    assert dumps(encoded) == '{"a":[1,"b"]}'
