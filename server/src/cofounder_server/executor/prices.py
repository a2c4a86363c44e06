"""Model prices: what a model call costs.

Cost of a model call = input tokens x input price + output tokens x output price, with
prices in microdollars per million tokens, rounded up to whole microdollars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cofounder_server.executor.plugins import Usage

DEFAULT_PRICES: dict[str, dict[str, int]] = {
    "default": {"input": 3_000_000, "output": 15_000_000},
    "scripted": {"input": 3_000_000, "output": 15_000_000},
}
"""Built-in table: $3 / $15 per million input / output tokens unless configured."""


@dataclass(frozen=True)
class Price:
    """Microdollars per million tokens."""

    input: int
    output: int


class PriceTable:
    """Model -> price, with a default for models not listed."""

    def __init__(self, prices: Mapping[str, Price], default: Price) -> None:
        self._prices = dict(prices)
        self.default = default

    @classmethod
    def parse(cls, text: str) -> PriceTable:
        """A table from JSON text or the path of a JSON file; empty: :data:`DEFAULT_PRICES`.

        ``{"default": {"input": N, "output": N}, "model-x": {...}}``; ``ValueError`` when
        malformed (start-up refuses it).
        """
        raw: Any
        if not text.strip():
            raw = DEFAULT_PRICES
        elif text.lstrip().startswith("{"):
            raw = json.loads(text)
        else:
            raw = json.loads(Path(text).read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or "default" not in raw:
            raise ValueError('the price table must be a JSON object with a "default" entry')
        prices: dict[str, Price] = {}
        for model, entry in raw.items():
            if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
                raise ValueError(f'price of {model!r} must be {{"input": N, "output": N}}')
            values = [entry["input"], entry["output"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                raise ValueError(f"prices of {model!r} must be non-negative integers")
            prices[str(model)] = Price(values[0], values[1])
        return cls(prices, prices["default"])

    def price_of(self, model: str) -> Price:
        """The price of ``model`` (the default entry if it is not listed)."""
        return self._prices.get(model, self.default)

    def cost(self, usage: Usage) -> int:
        """What a call cost, in microdollars, rounded up."""
        price = self.price_of(usage.model)
        tokens = max(0, usage.input_tokens) * price.input + max(0, usage.output_tokens) * price.output
        return math.ceil(tokens / 1_000_000)
