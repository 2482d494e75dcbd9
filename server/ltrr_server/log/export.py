"""A policy's joined decisions as DSJSON lines, streamed from a job process (``jobs.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from ltrr_server.log.dsjson import ExportedEvent, multi_json, to_line
from ltrr_server.log.events import actions_of, count_events, read_events
from ltrr_server.log.store import EventLogStore

# Lines per message: about 0.5 MB of a typical context. And characters per message, unless one
# line alone is more: a client refuses a message over 4 MiB by default (grpc's
# max_receive_message_length), and 500 lines of 11 KB (a context of 900 numbers; VW's own
# fixtures carry up to 15 KB a line) ended an export with RESOURCE_EXHAUSTED before this bound.
# A million characters are at most 4,000,000 bytes in UTF-8.
CHUNK_LINES = 500
CHUNK_CHARS = 1_000_000


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
        done = held = 0
        for ev in read_events(store, self.policy, self.since, self.until):
            line = to_line(ExportedEvent(ev.event_id, ev.created_at, ev.context, [], ev.probabilities, ev.chosen,
                                         ev.reward), _multi(ev.actions_text))
            if lines and (len(lines) >= CHUNK_LINES or held + len(line) > CHUNK_CHARS):
                send(Lines(lines, done, max(total, done)))
                lines, held = [], 0
            lines.append(line)
            held += len(line)
            done += 1
        send(Lines(lines, done, max(total, done)))
