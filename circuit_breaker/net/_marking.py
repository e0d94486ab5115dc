"""Markings: which tokens sit in which place, as frozen values compared by content."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Marking(Mapping[str, tuple[T, ...]], Generic[T]):
    """An immutable map from place to the tokens in it (oldest first). Empty places are absent.

    A marking belongs to one instance of a workflow, so a join only ever sees tokens of that instance, and
    enabling a transition looks at its input places only: the cost does not grow with the number of other
    instances waiting.
    """

    __slots__ = ("_hash", "_places")

    def __init__(self, places: Mapping[str, tuple[T, ...]] | None = None) -> None:
        self._places: dict[str, tuple[T, ...]] = {p: tuple(ts) for p, ts in (places or {}).items() if ts}
        self._hash: int | None = None

    @classmethod
    def _of(cls, places: dict[str, tuple[T, ...]]) -> Marking[T]:
        m: Marking[T] = cls.__new__(cls)
        m._places = places
        m._hash = None
        return m

    def __getitem__(self, place: str) -> tuple[T, ...]:
        return self._places[place]

    def get_tokens(self, place: str) -> tuple[T, ...]:
        return self._places.get(place, ())

    def count(self, place: str) -> int:
        return len(self._places.get(place, ()))

    def counts(self) -> dict[str, int]:
        return {p: len(ts) for p, ts in self._places.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._places)

    def __len__(self) -> int:
        return len(self._places)

    def tokens(self) -> Iterator[T]:
        for ts in self._places.values():
            yield from ts

    def total(self) -> int:
        return sum(len(ts) for ts in self._places.values())

    def add(self, place: str, *tokens: T) -> Marking[T]:
        places = dict(self._places)
        places[place] = places.get(place, ()) + tokens
        return Marking._of(places)

    def remove(self, place: str, *tokens: T) -> Marking[T]:
        """Without ``tokens`` (compared by equality) in ``place``; raises ValueError if one is missing."""
        current = list(self._places.get(place, ()))
        for tok in tokens:
            current.remove(tok)  # ValueError if absent
        places = dict(self._places)
        if current:
            places[place] = tuple(current)
        else:
            places.pop(place, None)
        return Marking._of(places)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Marking):
            return self._places == other._places
        if isinstance(other, Mapping):
            return self._places == {p: tuple(ts) for p, ts in other.items() if ts}
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._places.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"Marking({self._places!r})"
