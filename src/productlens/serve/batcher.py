"""Batching of requests that wait together: one model run serves several of them.

Requests join a FIFO list; ``workers`` worker tasks each take the oldest
waiting requests, up to ``max_batch``, and run them through ``fn`` in one trip
to the thread pool. Nothing waits for a batch to fill: at concurrency 1 every
batch is one request, and batches form only from requests that would have
queued anyway. Requests are counted by the app's
:class:`~productlens.serve.admission.Admission`: beyond its ``workers + queue``
requests running or waiting, a new one is refused at once with ``Busy`` (503).

``fn`` takes a list of requests and returns one result per request: a value,
or the exception that request raised (one bad request does not fail the
others in its batch).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Sequence

from productlens.serve.admission import Admission

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


class Batcher:
    """Run ``fn`` on batches of at most ``max_batch`` waiting requests, ``workers`` batches at once."""

    def __init__(self, fn: BatchFn, admission: Admission, *, workers: int = 1, max_batch: int = 1) -> None:
        self.fn = fn
        self.admission = admission
        self.workers = max(1, int(workers))
        self.max_batch = max(1, int(max_batch))
        self._pending: deque[tuple[Any, Callable | None, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    async def submit(self, request: Any, finish: Callable[[Any], Any] | None = None) -> Any:
        """The result of ``request``, with ``finish`` applied to it in the worker thread if given.

        Raises :class:`~productlens.serve.admission.Busy` at once when the
        queue is full, and the request's own exception when it failed.
        """
        with self.admission.admitted():
            self._start()
            fut = asyncio.get_running_loop().create_future()
            entry = (request, finish, fut)
            self._pending.append(entry)
            self._wake.set()
            try:
                return await fut
            finally:
                if not fut.done() and entry in self._pending:  # the caller went away: nobody runs it
                    self._pending.remove(entry)

    async def aclose(self) -> None:
        """Stop the worker tasks (the app's shutdown); waiting requests are cancelled."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._pending:
            _, _, fut = self._pending.popleft()
            fut.cancel()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._tasks and all(not t.done() and t.get_loop() is loop for t in self._tasks):
            return
        self._wake = asyncio.Event()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.workers)]

    async def _worker(self) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            try:
                results = await run_in_threadpool(self._call, batch)
            except Exception as exc:  # fn itself broke: every request of the batch hears it
                results = [exc] * len(batch)
            except BaseException:  # cancelled (shutdown): the batch's callers are cancelled too
                for _, _, fut in batch:
                    fut.cancel()
                raise
            for (_, _, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _call(self, batch: list) -> list:
        results = list(self.fn([req for req, _, _ in batch]))
        if len(results) != len(batch):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} requests")
        out = []
        for (_, finish, _), res in zip(batch, results):
            if finish is not None and not isinstance(res, Exception):
                try:
                    res = finish(res)
                except Exception as exc:
                    res = exc
            out.append(res)
        return out
