"""Event feeds: the durable, numbered event log of every job, the escalation feed, and their
live fan-out to watchers on every replica.

* :mod:`.model` — typed domain events (no protobuf), with the predecessor's ``type`` names.
* :mod:`.job_events` — :class:`~.job_events.JobEvents` (what job code calls to publish) and
  :class:`~.job_events.JobEventFeed` (WatchJobEvents).
* :mod:`.escalation_feed` — :class:`~.escalation_feed.EscalationFeed`: append and watch.
* :mod:`.hub` — one Redis pub/sub connection per process, shared by every watcher.
* :mod:`.feed` — the watch loop: snapshot, replay, live tail, heartbeats, errors.
"""
