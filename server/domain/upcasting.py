"""Old events in the new shape, on read: the log is never rewritten.

An ExperimentCreated logged before `facts` existed carries only the user's
manifest. Here it gets the facts computed from that manifest exactly as the
readers of that time computed them, so a replayed log means what it meant:

- the validated manifest, priority, searched or not, trials: from
  `parse_manifest` as the submit handler parsed it;
- a manifest that no longer parses (stored before a stricter parser): no plan,
  never searched, and the priority read leniently from the YAML as the
  experiments read model did (0 unless it is an integer);
- the objective runs are ranked by: read leniently from the YAML as the
  leaderboard did (`search.metric`, and `search.goal` defaulting to maximize),
  whether or not the manifest still parses.

Facts depend on the manifest text alone, so one parse serves every event
of the same text (a rebuild decodes each experiment's opening event once, and
many experiments share one manifest file).
"""

from __future__ import annotations

import functools

from runyard.server.domain.experiment_facts import facts_of
from runyard.server.domain.manifest_parse import load_yaml, parse_manifest
from runyard.v1 import events_pb2, facts_pb2


def upcast_experiment_created(msg: events_pb2.ExperimentCreated) -> events_pb2.ExperimentCreated:
    """`msg` with its facts: unchanged when it has them, else filled in from its manifest (in place)."""
    if not msg.HasField("facts"):
        msg.facts.CopyFrom(_facts_for(msg.manifest_yaml))
    return msg


def legacy_facts(manifest_yaml: str) -> facts_pb2.ExperimentFacts:
    """The facts the readers of a log without them derived from `manifest_yaml` (a fresh copy)."""
    facts = facts_pb2.ExperimentFacts()
    facts.CopyFrom(_facts_for(manifest_yaml))
    return facts


@functools.lru_cache(maxsize=256)
def _facts_for(manifest_yaml: str) -> facts_pb2.ExperimentFacts:
    try:
        # A manifest that validates names its objective as the lenient reading does: the parser takes
        # `search.metric` only as a non-empty string and `search.goal` only as maximize or minimize.
        # stored=True: the command was judged at submit; a stricter quoting scanner since must not unsearch it.
        return facts_of(parse_manifest(manifest_yaml, stored=True))
    except Exception:  # DomainError, or whatever a manifest the API never saw provokes: no reader fails on it
        pass
    try:
        doc: object = load_yaml(manifest_yaml or "")
    except Exception:
        doc = None
    facts = facts_pb2.ExperimentFacts(priority=_lenient_priority(doc))
    found = _lenient_objective(doc)
    if found is not None:
        facts.objective_metric, facts.objective_maximize = found
    return facts


def _lenient_priority(doc: object) -> int:
    """The experiments read model's reading of a manifest that no longer validates: 0 unless an integer."""
    value = doc.get("priority", 0) if isinstance(doc, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31 else 0


def _lenient_objective(doc: object) -> tuple[str, bool] | None:
    """The leaderboard's reading: a validated manifest once, so a stricter parser must not hide its objective."""
    search = doc.get("search") if isinstance(doc, dict) else None
    if not isinstance(search, dict) or not search.get("metric"):
        return None
    goal = str(search.get("goal") or "maximize").strip().lower()
    return str(search["metric"]), not goal.startswith("min")
