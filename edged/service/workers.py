"""Where blocking calls run: a fresh daemon thread per call, or the one inference thread.

Neither is joined at interpreter exit (a ThreadPoolExecutor's threads are), so a TensorRT
build, a stuck driver or a hung ``session.run`` can never hold a stopping process.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, honouring cancellation.

    ``asyncio.wait_for`` before Python 3.12 returns the inner result instead of raising
    when a cancellation arrives in the same loop iteration as the inner completion
    (CPython gh-86296); with frames setting the event many times a second that race is
    real, and a cancelled loop would keep running through shutdown. ``asyncio.wait``
    never swallows the cancellation.
    """
    await wait_any((event,), timeout)


async def wait_any(events: Iterable[asyncio.Event], timeout: float) -> None:
    """:func:`wait_event` for the first of several events."""
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on a fresh daemon thread (never joined at interpreter exit)."""
    future: Future[T] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    name = f"edged-{getattr(fn, '__name__', 'call')}"
    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wrap_future(future)


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Worker:
    """One daemon thread running submitted calls in order (the inference thread).

    A ThreadPoolExecutor would be joined at interpreter exit, so a stuck ``session.run``
    would hold a stopping daemon until systemd kills it.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future: Future[T] = Future()
        self._queue.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._queue.put(None)


__all__ = ["Worker", "in_thread", "wait_event"]
