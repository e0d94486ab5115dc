"""Tokens: the values that move through a workflow, with their history.

A token is immutable: firing a transition consumes tokens and produces new ones. Its history is a
``History``, an immutable sequence whose append shares storage with its parent when it can, so that a
token that has fired ten thousand times does not copy ten thousand entries on the next firing.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import core_schema

__all__ = ["History", "HistoryEntry", "Token", "new_id", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


_IDS: list[str] = []  # random ids made ahead, 256 per read of the OS's random source
os.register_at_fork(after_in_child=_IDS.clear)  # a child must not hand out its parent's ids


def new_id() -> str:
    """128 random bits as 32 hex characters (the shape of ``uuid4().hex``, at a fifteenth of the cost): read
    from the OS's random source 256 at a time."""
    try:
        return _IDS.pop()
    except IndexError:  # (also when another thread took the last one)
        block = os.urandom(16 * 256).hex()
        _IDS.extend(block[i : i + 32] for i in range(0, len(block), 32))
        return os.urandom(16).hex()


class HistoryEntry(BaseModel):
    """One thing that happened to a token: created, a transition fired, a rejection, a failure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: datetime = Field(default_factory=utcnow)
    kind: str
    transition: str | None = None
    from_places: tuple[str, ...] = ()
    to_places: tuple[str, ...] = ()
    actor: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    def __hash__(self) -> int:
        # details is a dict, so hash the fields that identify an entry; equal entries still hash equal.
        return hash((self.time, self.kind, self.transition, self.from_places, self.to_places, self.actor))


class History(Sequence[HistoryEntry]):
    """An immutable sequence of history entries with O(1) amortised append.

    ``append`` returns a new ``History``. When this history is the newest view of its buffer, the entry is
    appended to the shared buffer and the new view is one longer; older views keep their length and so never
    see it. Only when an older view is extended (a fork) is the buffer copied.
    """

    __slots__ = ("_buf", "_n")

    def __init__(self, entries: Iterable[HistoryEntry] = ()) -> None:
        self._buf: list[HistoryEntry] = list(entries)
        self._n = len(self._buf)

    @classmethod
    def _view(cls, buf: list[HistoryEntry], n: int) -> History:
        h = cls.__new__(cls)
        h._buf = buf
        h._n = n
        return h

    def append(self, entry: HistoryEntry) -> History:
        buf = self._buf
        if len(buf) != self._n:
            buf = buf[: self._n]
        buf.append(entry)
        return History._view(buf, self._n + 1)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[HistoryEntry]: ...
    def __getitem__(self, index: int | slice) -> HistoryEntry | list[HistoryEntry]:
        if isinstance(index, slice):
            return self._buf[: self._n][index]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError("history index out of range")
        return self._buf[index]

    def __iter__(self) -> Iterator[HistoryEntry]:
        buf = self._buf
        for i in range(self._n):
            yield buf[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, History):
            return self._n == other._n and self._buf[: self._n] == other._buf[: other._n]
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"History({list(self)!r})"

    # -- exports ---------------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") for e in self]

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_records(), indent=indent)

    def to_yaml(self) -> str:
        import yaml  # lazy: only exports need it

        return str(yaml.safe_dump(self.to_records(), sort_keys=False))

    def to_csv(self) -> str:
        """One row per entry; tuple and dict columns are JSON-encoded so the CSV round-trips."""
        out = io.StringIO()
        fields = list(HistoryEntry.model_fields)
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for rec in self.to_records():
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for k, v in rec.items()}
            )
        return out.getvalue()

    @classmethod
    def from_json(cls, text: str) -> History:
        return cls(HistoryEntry.model_validate(r) for r in json.loads(text))

    @classmethod
    def from_yaml(cls, text: str) -> History:
        import yaml

        return cls(HistoryEntry.model_validate(r) for r in yaml.safe_load(text) or [])

    @classmethod
    def from_csv(cls, text: str) -> History:
        entries = []
        for row in csv.DictReader(io.StringIO(text)):
            rec: dict[str, Any] = {}
            for key, value in row.items():
                if key in ("from_places", "to_places", "details"):
                    rec[key] = json.loads(value) if value else ([] if key != "details" else {})
                else:
                    rec[key] = value if value != "" else None
            entries.append(HistoryEntry.model_validate(rec))
        return cls(entries)

    # -- pydantic integration --------------------------------------------------------------------------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        entries_schema = handler.generate_schema(list[HistoryEntry])
        from_list = core_schema.no_info_after_validator_function(cls, entries_schema)
        # Serialised as the list of its entries, which pydantic-core then serialises natively.
        return core_schema.union_schema(
            [core_schema.is_instance_schema(cls), from_list],
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls._entries, return_schema=entries_schema, when_used="json"
            ),
        )

    def _entries(self) -> list[HistoryEntry]:
        return self._buf[: self._n]


class Token(BaseModel):
    """A token: which instance it belongs to, where it is, its data and its history."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    id: str = Field(default_factory=new_id)
    instance_id: str = Field(default_factory=new_id)
    place: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    history: History = Field(default_factory=History)

    def __hash__(self) -> int:
        # Ids are unique, so hashing by id agrees with pydantic's field-wise equality and works with dict data.
        return hash(self.id)

    def moved(self, place: str, data: dict[str, Any], entry: HistoryEntry, *, history: History | None = None) -> Token:
        """The token that firing produces from this one: a new id, the new place, data and one more entry.

        Built without re-validation: the engine has already checked ``data``.
        """
        now = entry.time
        base = self.history if history is None else history
        return make_token(
            {
                "id": new_id(),
                "instance_id": self.instance_id,
                "place": place,
                "data": data,
                "created_at": now,
                "updated_at": now,
                "history": base.append(entry),
            }
        )

    def with_data(self, data: dict[str, Any]) -> Token:
        """This token with other ``data`` (the same id, place and history): what ``model_copy(update=...)``
        gives, without its cost; ``data`` is not validated."""
        return make_token({**self.__dict__, "data": data})

    def export_history(self, fmt: str = "json") -> str:
        """The history as ``json``, ``yaml`` or ``csv``."""
        exporters = {"json": self.history.to_json, "yaml": self.history.to_yaml, "csv": self.history.to_csv}
        try:
            return exporters[fmt]()
        except KeyError:
            raise ValueError(f"unknown history format {fmt!r} (use json, yaml or csv)") from None


from ._construct import constructor  # noqa: E402 - needs the classes above

make_token = constructor(Token)
