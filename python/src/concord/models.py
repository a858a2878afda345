"""What the server answers, as small frozen dataclasses.

Every model keeps the JSON it was made from in ``raw``, so fields a newer server adds are
not lost to a caller who needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = [
    "Doc",
    "DocInfo",
    "ValueConflict",
    "ConflictValue",
    "LostEdit",
    "History",
    "HistoryEntry",
    "Lease",
    "Event",
]


@dataclass(frozen=True)
class ConflictValue:
    """One of the values held at a conflicting place."""

    value: Any
    """The value."""
    agent: Optional[str]
    """The agent whose change wrote it, if recorded."""
    change: Optional[str]
    """The hash of that change."""
    shown: bool
    """True for the value that reads show."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> ConflictValue:
        """Builds one from the server's JSON."""
        return cls(
            value=data.get("value"),
            agent=data.get("agent"),
            change=data.get("change"),
            shown=bool(data.get("shown", False)),
        )


@dataclass(frozen=True)
class ValueConflict:
    """A place holding concurrent values: two agents set it at the same time."""

    path: str
    """JSON Pointer of the place."""
    values: List[ConflictValue]
    """Every value, the shown one first."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> ValueConflict:
        """Builds one from the server's JSON."""
        return cls(
            path=data.get("path", ""),
            values=[ConflictValue.from_json(v) for v in data.get("values", [])],
        )


@dataclass(frozen=True)
class LostEdit:
    """An edit hidden by a concurrent delete, kept until restored or dismissed."""

    id: str
    """Names the record in :meth:`Client.restore_lost` and :meth:`Client.dismiss_lost`."""
    path: str
    """Where the deleted value was (a JSON Pointer at the version the write read)."""
    deleted_by: List[str]
    """The agents whose changes deleted it."""
    edited_by: List[str]
    """The agents whose edits inside it are no longer visible."""
    value: Any
    """The deleted value, with those edits."""
    change: str
    """The hash of the change that recorded it."""
    time: int
    """When it was recorded, milliseconds since the Unix epoch."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> LostEdit:
        """Builds one from the server's JSON."""
        return cls(
            id=data.get("id", ""),
            path=data.get("path", ""),
            deleted_by=list(data.get("deleted_by", [])),
            edited_by=list(data.get("edited_by", [])),
            value=data.get("value"),
            change=data.get("change", ""),
            time=int(data.get("time", 0)),
        )


@dataclass(frozen=True)
class Doc:
    """A document as the server answered it: its value and the version that value has.

    Pass a ``Doc`` (rather than its id) to :meth:`Client.write` or :meth:`Client.patch` and
    its ``version`` is the base of the write: "merge this as of the version I read".
    """

    id: str
    """The document id (a UUID)."""
    value: Any
    """Its value; after a write, the merged present."""
    version: str
    """Its version, bare (the ``ETag`` without quotes): the base to write against."""
    strategy: Optional[str] = None
    """Its write strategy (``crdt``, ``lww``, ``optimistic``, ``lock``, ``queue``,
    ``branches``)."""
    url: Optional[str] = None
    """Its automerge URL (reads only)."""
    path: Optional[str] = None
    """The JSON Pointer read, for a read of a subtree."""
    conflicts: Optional[List[ValueConflict]] = None
    """Every conflicting place (a read with ``conflicts=True`` only)."""
    lost: Optional[List[LostEdit]] = None
    """The open lost edits (a read of the present with ``conflicts=True`` only)."""
    new_changes: Optional[int] = None
    """How many changes a write added (writes only)."""
    replayed: bool = False
    """True when the server answered a retried write from its idempotency record: the
    write had already been applied and was not applied again."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The JSON body as received."""

    @classmethod
    def from_json(
        cls, data: Dict[str, Any], etag_version: Optional[str] = None, replayed: bool = False
    ) -> Doc:
        """Builds one from a read or write answer; the version comes from the body, or
        from the ``ETag`` when the body has none."""
        conflicts = data.get("conflicts")
        lost = data.get("lost")
        return cls(
            id=str(data.get("id", "")),
            value=data.get("value"),
            version=data.get("version") or etag_version or "",
            strategy=data.get("strategy"),
            url=data.get("url"),
            path=data.get("path"),
            conflicts=None
            if conflicts is None
            else [ValueConflict.from_json(c) for c in conflicts],
            lost=None if lost is None else [LostEdit.from_json(x) for x in lost],
            new_changes=data.get("new_changes"),
            replayed=replayed,
            raw=data,
        )


@dataclass(frozen=True)
class DocInfo:
    """One row of :meth:`Client.list`."""

    id: str
    """The document id."""
    strategy: str
    """Its write strategy."""
    version: str
    """Its current version."""
    changes: int
    """How many changes its history holds."""
    created_at: int
    """Creation time, milliseconds since the Unix epoch."""
    updated_at: int
    """Last change, milliseconds since the Unix epoch."""
    last_agent: Optional[str]
    """Who made the last change."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The JSON as received."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> DocInfo:
        """Builds one from the server's JSON."""
        return cls(
            id=str(data.get("id", "")),
            strategy=data.get("strategy", ""),
            version=data.get("version", ""),
            changes=int(data.get("changes", 0)),
            created_at=int(data.get("created_at", 0)),
            updated_at=int(data.get("updated_at", 0)),
            last_agent=data.get("last_agent"),
            raw=data,
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One change of a document's history."""

    hash: str
    """The change hash (hex)."""
    agent: Optional[str]
    """The agent recorded in the change."""
    time: int
    """When, seconds since the Unix epoch, as recorded."""
    deps: List[str]
    """The hashes this change depends on."""
    ops: int
    """How many operations it holds."""
    message: Optional[str] = None
    """A message recorded besides the agent, if any."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The JSON as received."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> HistoryEntry:
        """Builds one from the server's JSON."""
        return cls(
            hash=data.get("hash", ""),
            agent=data.get("agent"),
            time=int(data.get("time", 0)),
            deps=list(data.get("deps", [])),
            ops=int(data.get("ops", 0)),
            message=data.get("message"),
            raw=data,
        )


@dataclass(frozen=True)
class History:
    """A document's change graph (:meth:`Client.history`)."""

    id: str
    """The document id."""
    version: str
    """Its current version."""
    changes: List[HistoryEntry]
    """Every change, in causal order."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> History:
        """Builds one from the server's JSON."""
        return cls(
            id=str(data.get("id", "")),
            version=data.get("version", ""),
            changes=[HistoryEntry.from_json(c) for c in data.get("changes", [])],
        )

    @property
    def agents(self) -> List[Optional[str]]:
        """The agent of each change, in order."""
        return [c.agent for c in self.changes]


@dataclass(frozen=True)
class Lease:
    """The lease of a document with the ``lock`` strategy (:meth:`Client.lock`)."""

    token: str
    """The fencing token: pass it (or this lease) as ``lock=`` to writes, and to
    :meth:`Client.release`."""
    expires_at: int
    """When the lease ends, milliseconds since the Unix epoch (the server's clock)."""
    ttl_ms: Optional[int] = None
    """The lease's length, as granted."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Lease:
        """Builds one from the server's JSON."""
        return cls(
            token=str(data.get("token", "")),
            expires_at=int(data.get("expires_at", 0)),
            ttl_ms=data.get("ttl_ms"),
        )


@dataclass(frozen=True)
class Event:
    """One event of a document's live stream (:meth:`Client.events`).

    ``type`` is ``"snapshot"`` (the whole value: replace what you have; the first event,
    and again if the server could not replay what a reconnect missed), ``"change"`` (one
    change, with the RFC 6902 ``patch`` from ``previous`` to ``version``) or
    ``"deleted"`` (the document is gone; the stream ends after it).
    """

    type: str
    """``snapshot``, ``change`` or ``deleted``."""
    id: Optional[str]
    """The SSE event id: the version after the event (``None`` for ``deleted``)."""
    version: Optional[str] = None
    """The document's version after this event."""
    value: Any = None
    """The whole value (``snapshot`` only)."""
    previous: Optional[str] = None
    """The version before the change (``change`` only)."""
    agent: Optional[str] = None
    """Who made the change (``change`` only)."""
    time_ms: Optional[int] = None
    """When, milliseconds since the Unix epoch (``change`` only)."""
    patch: Optional[List[Dict[str, Any]]] = None
    """RFC 6902 operations from ``previous`` to ``version`` (``change`` only)."""
    data: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The event's JSON data as received."""

    @classmethod
    def from_json(cls, kind: str, event_id: Optional[str], data: Dict[str, Any]) -> Event:
        """Builds one from an SSE event's name, id and JSON data."""
        return cls(
            type=kind,
            id=event_id,
            version=data.get("version"),
            value=data.get("value"),
            previous=data.get("previous"),
            agent=data.get("agent"),
            time_ms=data.get("time_ms"),
            patch=data.get("patch"),
            data=data,
        )
