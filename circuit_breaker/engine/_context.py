"""What an action is running for: the firing's identity, readable from inside the action.

Actions run at least once: after a crash (or when another engine committed first) an action may run again
for the same firing. ``current_firing().idempotency_key`` is the same on every such run — the instance, the
transition and the tokens it consumes — so an action can hand it to the outside world (an ``Idempotency-Key``
header, a unique database key) and have its effect happen once.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Firing", "current_firing"]


@dataclass(frozen=True, slots=True)
class Firing:
    workflow: str
    instance_id: str
    transition: str
    token_ids: tuple[str, ...]
    attempt: int
    key: str | None = None  # the key as the engine made it (a worker runs a task without its token ids)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries, crashes and engines for this firing; different for any other firing."""
        if self.key is not None:
            return self.key
        digest = hashlib.blake2b("|".join(self.token_ids).encode(), digest_size=10).hexdigest()
        return f"{self.instance_id}:{self.transition}:{digest}"


_current: ContextVar[Firing | None] = ContextVar("circuit_breaker_firing", default=None)


def current_firing() -> Firing | None:
    """The firing whose action is running in this task, or None outside actions."""
    return _current.get()
