"""The change vocabulary: spend percentages and the agent state a finished job shows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from cofounder_server.domain.changes import Change, Spend, visible_agent_state
from cofounder_server.domain.escalations import Escalation, EscalationStatus, EscalationTrigger
from cofounder_server.domain.events import AgentThinking, EscalationEvent, EscalationEventKind, JobEvent
from cofounder_server.domain.model import AgentSpec, AgentState, Job, JobStatus

NOW = datetime(2026, 3, 1, tzinfo=UTC)
JOB = Job(
    job_id="j1",
    owner_id="alice",
    project_id="p",
    goal="g",
    daily_budget_microdollars=1000,
    agent=AgentSpec(brain="scripted"),
    labels={},
    status=JobStatus.RUNNING,
    outcome=None,
    outcome_detail="",
    agent_state=AgentState.SLEEPING,
    wake_at=None,
    create_time=NOW,
    update_time=NOW,
    end_time=None,
    version=3,
)


@pytest.mark.parametrize(("spent", "budget", "percent"), [(0, 1000, 0), (905, 1000, 90), (1500, 1000, 100)])
def test_spend_percent_is_whole_and_clamped(spent: int, budget: int, percent: int) -> None:
    assert Spend(spent, budget).percent == percent


def test_a_finished_job_never_shows_an_agent_on_the_job() -> None:
    assert visible_agent_state(JOB) is AgentState.SLEEPING
    cancelled = replace(JOB, status=JobStatus.CANCELLED)
    assert visible_agent_state(cancelled) is None
    completed = replace(JOB, status=JobStatus.READY, agent_state=AgentState.COMPLETED)
    assert visible_agent_state(completed) is AgentState.COMPLETED


def test_a_change_knows_its_job_and_newest_sequence() -> None:
    events = [JobEvent("j1", n, NOW, AgentThinking(iteration=n, text="t")) for n in (4, 5)]
    assert Change.of(JOB, events).last_sequence == 5
    assert Change.of(JOB).last_sequence == 0
    appended = Change.appended(events)
    assert (appended.job_id, appended.job) == ("j1", None)
    with pytest.raises(ValueError, match="at least one event"):
        Change.appended([])


def test_a_change_names_the_escalations_of_its_feed_entries() -> None:
    raised = Escalation(
        "e1", "j1", "alice", EscalationStatus.PENDING, EscalationTrigger.AGENT_QUESTION, "?", NOW
    )
    resolved = replace(raised, escalation_id="e2", status=EscalationStatus.RESOLVED, decision="yes")
    feed = [
        EscalationEvent(7, EscalationEventKind.RAISED, NOW, raised),
        EscalationEvent(8, EscalationEventKind.RESOLVED, NOW, resolved),
    ]
    assert Change.of(JOB, feed=feed).escalations == (raised, resolved)
    assert Change(JOB.job_id, None, feed=tuple(feed[1:])).escalations == (resolved,)
    assert Change.of(JOB).escalations == ()
