"""Slots and the queue in front of them: how `minicpm serve` runs several requests at once.

A backend runs one generation at a time and is not thread-safe, so the server holds a pool of N
independently loaded backends (N slots = N model copies in memory). A request takes a free slot;
when every slot is busy it waits in a FIFO queue of bounded depth, and beyond that it is refused
(503). The depth and the busy slots are counted here and reported by /health and in response
headers: the server never serialises requests silently.

Each generation runs in its own thread, so the event loop keeps serving while a model computes;
its events cross to the loop through an asyncio queue. Cancelling a generation (the client left)
sets a flag the thread checks between events; the thread then closes the backend's generator,
which ends the torch or llama.cpp loop between two tokens, and only then gives the slot back.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.events import GenerationEvent


class QueueFullError(Exception):
    """Every slot is busy and the queue holds as many requests as it may."""


@dataclass
class ServerStats:
    """Counters since the server started, for /health (and for tests that check cancellation)."""

    requests_completed: int = 0
    requests_cancelled: int = 0  # the client left before the generation ended
    requests_failed: int = 0  # refused after a slot was taken (bad input the backend found), or a bug
    requests_rejected_queue_full: int = 0
    tokens_generated: int = 0


@dataclass
class SlotPool:
    """N backends, each lent to one generation at a time, and a bounded FIFO queue of waiters."""

    backends: list[Any]
    queue_size: int
    stats: ServerStats = field(default_factory=ServerStats)

    def __post_init__(self) -> None:
        self._free: deque[Any] = deque(self.backends)
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def busy(self) -> int:
        return len(self.backends) - len(self._free)

    @property
    def queue_depth(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> Any:
        """A free backend, after waiting in line if need be; QueueFullError when the line is full."""
        if self._free and not self._waiters:
            return self._free.popleft()
        if self.queue_depth >= self.queue_size:
            self.stats.requests_rejected_queue_full += 1
            raise QueueFullError
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The waiting request went away. If release() handed it a backend in the same instant,
            # pass that backend on; otherwise just leave the line.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, backend: Any) -> None:
        """Give a backend back: to the longest-waiting request, or to the free list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(backend)
                return
        self._free.append(backend)


@dataclass(frozen=True)
class Scored:
    """A generation event and the text of the token ids it mentions (for logprobs on the wire)."""

    event: GenerationEvent
    token_texts: dict[int, str]


class Generation:
    """One generation running in its own thread; `next()` hands its events to the event loop.

    start: called in the thread; returns the backend's event iterator (a backend raises bad-input
    errors either there or at the first next(), so both happen in the thread and reach the caller
    through next()). token_text: turns a token id into text, called in the thread too, because a
    backend may only be touched by the thread that runs it.
    """

    def __init__(self, start: Callable[[], Iterator[GenerationEvent]], *, on_finish: Callable[[], None],
                 stats: ServerStats, token_text: Callable[[int], str] | None = None):
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        self._start = start
        self._on_finish = on_finish
        self._stats = stats
        self._token_text = token_text
        self.cancelled = False  # set when cancel() stopped the generation before its last event
        self.failed = False
        self.refused = False
        self.tokens = 0  # generated so far (the running usage of the latest event)
        self._thread = threading.Thread(target=self._run, name="minicpm-generation", daemon=True)
        self._thread.start()

    def cancel(self, *, refused: bool = False) -> None:
        """Stop after the current token (a no-op once the generation has ended).

        refused: the server turned the request down after its first event (max_tokens does not fit
        after the prompt), which /health counts as failed, not as cancelled by the client."""
        self.refused = self.refused or refused
        self._stop.set()

    async def next(self) -> Scored | None:
        """The next event; None once the generation has ended (normally or cancelled).

        Raises what the backend raised."""
        kind, value = await self._items.get()
        if kind == "event":
            return value
        if kind == "error":
            raise value
        self._items.put_nowait((kind, value))  # "end" stays, so later calls see it too
        return None

    def _send(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down and nobody listens
            pass

    def _run(self) -> None:
        try:
            events = self._start()
            try:
                for event in events:
                    self.tokens = event.completion_tokens
                    self._send("event", Scored(event, self._texts(event)))
                    if event.finish_reason is not None:
                        break
                    if self._stop.is_set():
                        self.cancelled = True
                        break
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # ends the torch or llama.cpp loop between tokens
        except BaseException as exc:  # noqa: BLE001 - handed to the request, which decides what the client sees
            self.failed = True
            self._send("error", exc)
        finally:
            self._finish()

    def _finish(self) -> None:
        def account() -> None:
            self._stats.tokens_generated += self.tokens
            if self.failed or self.refused:
                self._stats.requests_failed += 1
            elif self.cancelled:
                self._stats.requests_cancelled += 1
            else:
                self._stats.requests_completed += 1
            self._on_finish()

        # call_soon_threadsafe keeps order: the slot is free before the request sees "end".
        try:
            self._loop.call_soon_threadsafe(account)
        except RuntimeError:
            pass
        self._send("end", None)

    def _texts(self, event: GenerationEvent) -> dict[int, str]:
        if self._token_text is None or event.token is None:
            return {}
        ids = [event.token, *(t for t, _ in event.top_logprobs)]
        return {t: self._token_text(t) for t in ids}
