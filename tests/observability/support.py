"""Scraping a real server's metrics endpoint over loopback."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape_text(port: int) -> str:
    """The body of ``/metrics`` (fetched off the event loop: the scrape queries SQL on it)."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            body: bytes = response.read()
            return body.decode()

    return await asyncio.to_thread(fetch)


async def scrape(port: int) -> Samples:
    """Every sample of the scrape, keyed by sample name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(await scrape_text(port)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter appears at its first increment)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    """The metric sample names in a scrape."""
    return {name for name, _ in samples}
