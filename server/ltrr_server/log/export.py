"""A policy's joined decisions as DSJSON lines, streamed from a job process (``jobs.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from ltrr_server.log.dsjson import ExportedEvent, multi_json, to_line
from ltrr_server.log.events import actions_of, count_events, read_events
from ltrr_server.log.store import EventLogStore

# Lines per message: about 0.5 MB of a typical context, well under gRPC's 4 MB.
CHUNK_LINES = 500


@lru_cache(maxsize=1024)
def _multi(actions_text: str) -> str:
    """The ``_multi`` JSON of the actions logged as ``actions_text``: written once per distinct list."""
    return multi_json(actions_of(actions_text))


@dataclass(frozen=True)
class Lines:
    lines: list[str]
    done: int
    total: int


@dataclass(frozen=True)
class ExportJob:
    """Every joined decision of ``policy`` made in [since, until), oldest joins first."""

    policy: str
    since: float
    until: float

    def run(self, store: EventLogStore, send: Callable[[object], None]) -> None:
        total = count_events(store, self.policy, self.since, self.until)
        lines: list[str] = []
        done = 0
        for ev in read_events(store, self.policy, self.since, self.until):
            lines.append(to_line(ExportedEvent(ev.event_id, ev.created_at, ev.context, [], ev.probabilities,
                                               ev.chosen, ev.reward), _multi(ev.actions_text)))
            done += 1
            if len(lines) >= CHUNK_LINES:
                send(Lines(lines, done, max(total, done)))
                lines = []
        send(Lines(lines, done, max(total, done)))
