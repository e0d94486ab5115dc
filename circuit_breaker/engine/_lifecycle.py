"""The instance lifecycle as an explicit state machine, defined with the ``transitions`` library.

The machine is built once; each instance keeps only its status string, and every status change is checked
against the machine's transition table, so an illegal move (resume a completed instance) is an error.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from typing import Any

from ..errors import InstanceStateError


class InstanceStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


S = InstanceStatus

LIFECYCLE: list[dict[str, Any]] = [
    {"trigger": "wait", "source": [S.RUNNING], "dest": S.WAITING},
    {"trigger": "proceed", "source": [S.WAITING], "dest": S.RUNNING},
    {"trigger": "complete", "source": [S.RUNNING, S.WAITING], "dest": S.COMPLETED},
    {"trigger": "fail", "source": [S.RUNNING, S.WAITING], "dest": S.FAILED},
    {"trigger": "retry", "source": [S.FAILED], "dest": S.RUNNING},
    {"trigger": "pause", "source": [S.RUNNING, S.WAITING], "dest": S.PAUSED},
    {"trigger": "resume", "source": [S.PAUSED], "dest": S.RUNNING},
    {"trigger": "cancel", "source": [S.RUNNING, S.WAITING, S.PAUSED, S.FAILED], "dest": S.CANCELLED},
    {"trigger": "roll_back", "source": [S.FAILED, S.CANCELLED], "dest": S.ROLLED_BACK},
]

SETTLED = frozenset({S.WAITING, S.PAUSED, S.COMPLETED, S.FAILED, S.CANCELLED, S.ROLLED_BACK})
TERMINAL = frozenset({S.COMPLETED, S.CANCELLED, S.ROLLED_BACK})


@cache
def _table() -> dict[tuple[str, str], str]:
    from transitions import Machine

    machine = Machine(
        model=None,
        states=[s.value for s in InstanceStatus],
        transitions=[
            {"trigger": t["trigger"], "source": [s.value for s in t["source"]], "dest": t["dest"].value}
            for t in LIFECYCLE
        ],
        initial=S.RUNNING.value,
        auto_transitions=False,
    )
    table: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                table[(source, trigger)] = str(t.dest)
    return table


def next_status(instance_id: str, current: InstanceStatus, trigger: str) -> InstanceStatus:
    """The status after ``trigger``; raises InstanceStateError when the machine has no such move."""
    dest = _table().get((current.value, trigger))
    if dest is None:
        raise InstanceStateError(instance_id, current.value, trigger.replace("_", " "))
    return InstanceStatus(dest)


def can(current: InstanceStatus, trigger: str) -> bool:
    return (current.value, trigger) in _table()
