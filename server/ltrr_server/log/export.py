"""A policy's joined decisions as DSJSON lines, streamed from a job process (``jobs.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ltrr_server.log.dsjson import ExportedEvent, multi_json, to_line
from ltrr_server.log.events import count_events, read_events
from ltrr_server.log.store import EventLogStore

# Lines per message: about 0.5 MB of a typical context, well under gRPC's 4 MB.
CHUNK_LINES = 500


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
        multis: dict[str, str] = {}
        done = 0
        for ev in read_events(store, self.policy, self.since, self.until):
            multi = multis.get(ev.actions_text)
            if multi is None:
                if len(multis) >= 1024:
                    multis.clear()
                multi = multis[ev.actions_text] = multi_json(ev.actions)
            lines.append(to_line(ExportedEvent(ev.event_id, ev.created_at, ev.context, [], ev.probabilities,
                                               ev.chosen, ev.reward), multi))
            done += 1
            if len(lines) >= CHUNK_LINES:
                send(Lines(lines, done, max(total, done)))
                lines = []
        send(Lines(lines, done, max(total, done)))
