"""The daemon's lifecycle, shaped like uvicorn's: startup, main loop, bounded shutdown.

The first SIGTERM/SIGINT sets the stop event: startup is cancelled or the main loop ends,
and the shutdown runs its steps in order, each against its own deadline (a step that
overruns is abandoned and logged, the next one still runs). A second SIGTERM/SIGINT while
stopping forces the exit: the step in progress is abandoned, the rest skipped, and the
daemon returns a non-zero exit code at once (an operator pressing Ctrl-C twice, or
systemd's stop timeout, must not wait on a stuck broker or driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

#: The exit code of a shutdown cut short by a second signal.
FORCED_EXIT_CODE = 1


@dataclass(frozen=True)
class Step:
    """One shutdown step: a name for the log, its deadline, the coroutine that does it."""

    name: str
    deadline_s: float
    run: Callable[[], Awaitable[object]]


class StopSignals:
    """SIGTERM/SIGINT: the first sets ``stop``, one more while stopping sets ``force``."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.received, sig)

    def received(self, sig: int) -> None:
        if self.stop.is_set():
            log.warning("daemon_force_exit", signal=signal.Signals(sig).name)
            self.force.set()
        else:
            self.stop.set()


async def run_steps(steps: list[Step], force: asyncio.Event) -> bool:
    """Run ``steps`` in order, each bounded by its deadline; False when ``force`` cut the
    shutdown short (the step in progress abandoned, the rest skipped)."""
    for step in steps:
        if force.is_set():
            return False
        task = asyncio.ensure_future(step.run())
        forced = asyncio.ensure_future(force.wait())
        try:
            done, _ = await asyncio.wait(
                {task, forced}, timeout=step.deadline_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            forced.cancel()
        if task not in done:
            task.cancel()
            if force.is_set():
                log.warning("shutdown_step_abandoned", step=step.name, reason="forced exit")
                return False
            log.warning("shutdown_step_timeout", step=step.name, deadline_s=step.deadline_s)
            continue
        exc = task.exception()
        if exc is not None:
            log.warning("shutdown_step_failed", step=step.name, error=repr(exc))
    return True


__all__ = ["FORCED_EXIT_CODE", "Step", "StopSignals", "run_steps"]
