"""Event fan-out: the live delivery of job events and the escalation feed to watchers on
every replica. The event payload types are domain vocabulary (:mod:`cofounder_server.domain.events`);
the feeds that watchers open are use cases (:mod:`cofounder_server.services.job_feed`,
:mod:`cofounder_server.services.escalation_feed`).

* :mod:`.job_events` — the wire form of a job event.
* :mod:`.escalation_events` — the wire form of an escalation feed entry.
* :mod:`.hub` — one Redis pub/sub connection per process, shared by every watcher.
* :mod:`.feed` — the watch loop: snapshot, replay, live tail, heartbeats, errors.
"""
