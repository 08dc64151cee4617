"""The read side: every answer built from the read models, in one room.

The write side (commands, ingest, the search driver, the scheduler's leader)
appends events; the projectors turn them into tables; the modules here read
those tables and nothing else (never the event log's payloads). Keeping them
together makes that boundary visible: a module here imports the projections'
tables, the pure domain, protobuf and its neighbours here, and nothing that
writes (tests/unit/server/test_read_side.py holds it to that).

- `resources`: experiments, runs, agents and metrics as API resources.
- `accounts`: accounts and API keys (the key lookup auth makes on every call).
- `usage`: the usage projection, for UsageService and GetRun.
- `run_scores`: a leaderboard's best search-metric value and GPU time per run.
- `downsample`: which points of a long metric history a read returns (pure).
- `scheduling`: the snapshot the scheduling policy decides on (queue, agents,
  accounts). It lived in `scheduler/`, but it only reads read models; the
  leader is one of its callers, `queue_explainer` and admission are others.
- `queue_explainer`: why each queued run waits, computed on any replica by
  running the pure policy over `scheduling`'s snapshot; it writes nothing.

`server/logs.py` stays where it is: it configures structlog, it reads nothing.
"""
