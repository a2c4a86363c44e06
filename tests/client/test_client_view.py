"""The live view's state: a snapshot is the truth about the job, replayed history only fills
the event list and what no snapshot carries; later events move the state on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from cofounder.agent.v1 import escalation_pb2, event_pb2, job_pb2
from cofounder_client.view import JobView, dollars, format_countdown

JOB = "0b8f0d6e-0000-4000-8000-000000000000"
MIDNIGHT = datetime(2026, 12, 6, tzinfo=UTC)


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def snapshot(sequence: int, **fields: Any) -> job_pb2.JobStatusSnapshot:
    return job_pb2.JobStatusSnapshot(job_id=JOB, latest_event_sequence=sequence, **fields)


def job_event(sequence: int, **payload: Any) -> event_pb2.JobEvent:
    return event_pb2.JobEvent(job_id=JOB, sequence=sequence, type="t", **payload)


def test_history_before_the_snapshot_does_not_overwrite_it() -> None:
    view = JobView(JOB, recent=3)
    view.apply_snapshot(
        snapshot(
            4,
            job_status=job_pb2.JOB_STATUS_RUNNING,
            agent_state=job_pb2.AGENT_STATE_WORKING,
            budget_percent=61,
            daily_budget_microdollars=8_000_000,
            spent_today_microdollars=4_890_000,
        )
    )
    view.apply_event(job_event(1, phase_started=event_pb2.PhaseStarted(phase="build")))
    view.apply_event(job_event(2, agent_sleeping=event_pb2.AgentSleeping(wake_time=timestamp(MIDNIGHT))))
    view.apply_event(job_event(3, agent_waking=event_pb2.AgentWaking(top_up_microdollars=3_000_000)))
    view.apply_event(
        job_event(
            4,
            agent_budget_updated=event_pb2.AgentBudgetUpdated(
                budget_percent=96, spent_today_microdollars=4_800_000, daily_budget_microdollars=5_000_000
            ),
        )
    )

    assert view.agent_state == job_pb2.AGENT_STATE_WORKING  # not the replayed sleep
    assert view.wake_time is None
    assert (view.budget_percent, view.daily_budget_microdollars) == (61, 8_000_000)
    assert view.phase == "build"
    assert view.top_ups_microdollars == 3_000_000
    assert [line.sequence for line in view.recent] == [2, 3, 4]  # the last three

    view.apply_event(job_event(5, agent_sleeping=event_pb2.AgentSleeping(wake_time=timestamp(MIDNIGHT))))
    assert view.agent_state == job_pb2.AGENT_STATE_SLEEPING
    assert view.wake_time == MIDNIGHT


def test_questions_come_and_go() -> None:
    view = JobView(JOB)
    view.apply_snapshot(snapshot(0, pending_escalation_ids=["e-1"]))
    assert view.unknown_escalations() == ["e-1"]
    view.apply_escalation(
        escalation_pb2.Escalation(
            escalation_id="e-1", status=escalation_pb2.ESCALATION_STATUS_PENDING, problem="Deploy?"
        )
    )
    assert view.unknown_escalations() == []

    view.apply_event(
        job_event(1, agent_waiting_for_input=event_pb2.AgentWaitingForInput(escalation_id="e-2"))
    )
    assert view.agent_state == job_pb2.AGENT_STATE_WAITING_FOR_INPUT
    assert view.unknown_escalations() == ["e-2"]
    view.apply_event(
        job_event(2, agent_escalation_withdrawn=event_pb2.AgentEscalationWithdrawn(escalation_id="e-2"))
    )
    view.apply_event(
        job_event(3, agent_escalation_resolved=event_pb2.AgentEscalationResolved(escalation_id="e-1"))
    )
    assert view.pending == {}
    assert view.agent_state == job_pb2.AGENT_STATE_WORKING

    view.apply_event(
        job_event(
            4,
            job_status_changed=event_pb2.JobStatusChanged(
                status=job_pb2.JOB_STATUS_FAILED, outcome=job_pb2.JOB_OUTCOME_BUDGET_EXCEEDED
            ),
        )
    )
    assert view.finished
    assert view.agent_state == job_pb2.AGENT_STATE_BUDGET_EXCEEDED


def test_money_and_durations_for_people() -> None:
    assert dollars(4_500_000) == "$4.50"
    assert dollars(1_234_567_890) == "$1,234.57"
    assert dollars(1_500) == "$0.0015"
    assert dollars(0) == "$0.00"
    assert format_countdown(7 * 3600 + 47 * 60 + 12) == "7h 47m 12s"
    assert format_countdown(185.9) == "3m 05s"
    assert format_countdown(-3) == "0s"
