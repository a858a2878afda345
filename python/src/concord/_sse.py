"""A Server-Sent Events parser (the WHATWG event-stream format), fed one line at a time.

Pure: it takes decoded lines (without their line terminator) and hands back complete
events. It keeps the last event id the way a browser's ``EventSource`` does: an event
without an ``id`` field leaves it unchanged, so a reconnect resumes after the last event
that had one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RawEvent:
    """One dispatched event: its name (``message`` when unnamed), id and data."""

    event: str
    """The ``event`` field, or ``message``."""
    id: Optional[str]
    """The event's own ``id`` field, if it had one (the parser's ``last_event_id`` keeps
    the last one seen)."""
    data: str
    """The ``data`` lines, joined with newlines."""


class SseParser:
    """Turns event-stream lines into :class:`RawEvent` values."""

    def __init__(self, last_event_id: Optional[str] = None) -> None:
        self.last_event_id = last_event_id
        """The id to send as ``Last-Event-ID`` on a reconnect."""
        self.retry_ms: Optional[int] = None
        """The reconnection delay the server asked for (``retry:``), if any."""
        self._event = ""
        self._data: list = []
        self._id: Optional[str] = None

    def feed(self, line: str) -> Optional[RawEvent]:
        """Takes one line; returns an event when the line completes one (a blank line)."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value or None
                self._id = value or None
        elif name == "retry":
            if value.isdigit():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Optional[RawEvent]:
        data, event, own_id = self._data, self._event, self._id
        self._data, self._event, self._id = [], "", None
        if not data:
            return None
        return RawEvent(event=event or "message", id=own_id, data="\n".join(data))
