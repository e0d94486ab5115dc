"""Which signals stop a command, and a closed terminal (SIGHUP) handled as Ctrl-C.

A hang-up stops a command as Ctrl-C does, with its clean-up: an embedded nats-server runs in a session of its
own, so nothing else would stop it. ``nohup`` (SIGHUP ignored when the command starts) keeps it running.
"""

from __future__ import annotations

import signal

__all__ = ["hang_up_as_ctrl_c", "stop_signals"]


def stop_signals() -> list[signal.Signals]:
    """SIGINT and SIGTERM, and SIGHUP unless it is ignored (``nohup``)."""
    found = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        found.append(signal.SIGHUP)
    return found


def hang_up_as_ctrl_c() -> None:
    """From now on a hang-up acts as one Ctrl-C (the terminal sends several: the rest are ignored), unless
    SIGHUP is ignored already (``nohup``). Long-running commands install their own handlers in their loop.

    A command a shell started in the background inherits SIGINT ignored; it gets Python's handler back, so that
    ``asyncio.run`` takes the hang-up (turned into SIGINT) the clean way: by cancelling its main task."""
    if not hasattr(signal, "SIGHUP") or signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, _hung_up)


def _hung_up(signum: int, frame: object) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.raise_signal(signal.SIGINT)  # as Ctrl-C: inside asyncio.run, its main task is cancelled cleanly
