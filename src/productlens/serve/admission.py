"""Admission control: at most ``workers`` inferences at once, ``queue`` more waiting, the rest refused.

Used from the event loop (async routes): waiting never blocks the loop, and
a request beyond the limit is refused at once (503 with Retry-After) instead
of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Iterator


class Busy(Exception):
    """The service is at capacity (answered 503 with Retry-After)."""


class Admission:
    def __init__(self, workers: int = 1, queue: int = 8) -> None:
        self._slots = asyncio.Semaphore(max(1, workers))
        self._inside = 0
        self.limit = max(1, workers) + max(0, queue)

    @property
    def inside(self) -> int:
        """Requests running or waiting now."""
        return self._inside

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count the body as a request inside; raise Busy at once when the queue is full.

        For work that waits for a worker some other way (the identify batcher)."""
        if self._inside >= self.limit:
            raise Busy()
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run the body when a worker is free; raise Busy at once when the queue is full."""
        with self.admitted():
            async with self._slots:
                yield
