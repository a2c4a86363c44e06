"""Request fingerprints: equal requests match, any difference does not."""

from __future__ import annotations

from cofounder_server.domain.model import AgentSpec
from cofounder_server.store.idempotency import request_fingerprint

from .support import new_job


def test_equal_requests_have_equal_fingerprints() -> None:
    assert request_fingerprint(new_job()) == request_fingerprint(new_job())


def test_mapping_order_does_not_matter() -> None:
    first = new_job(labels={"a": "1", "b": "2"}, agent=AgentSpec(brain="x", config={"p": 1, "q": [1, 2]}))
    second = new_job(labels={"b": "2", "a": "1"}, agent=AgentSpec(brain="x", config={"q": [1, 2], "p": 1}))
    assert request_fingerprint(first) == request_fingerprint(second)


def test_any_difference_changes_the_fingerprint() -> None:
    variants = [
        new_job(),
        new_job(goal="another goal"),
        new_job(owner_id="bob"),
        new_job(project_id="proj-2"),
        new_job(daily_budget_microdollars=1),
        new_job(labels={}),
        new_job(agent=AgentSpec(brain="scripted", model="other", config={"turns": ["a", "b"], "n": 2})),
        new_job(agent=AgentSpec(brain="scripted", model="test-model", config={"turns": ["b", "a"], "n": 2})),
    ]
    assert len({request_fingerprint(variant) for variant in variants}) == len(variants)


def test_the_fingerprint_of_a_request_never_changes() -> None:
    """Keys stored by an earlier release must still match a retry of the same request."""
    request = new_job(
        goal="ship ✓",
        daily_budget_microdollars=5,
        agent=AgentSpec(
            brain="scripted",
            model="m",
            config={"turns": [{"text": "a", "n": 1.5}], "flag": True, "none": None},
        ),
    )
    assert request_fingerprint(request) == "7035e5405db02038d2d25744c2af6115e71441b037b0cb0c1355e06d49baa37f"
