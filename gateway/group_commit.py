"""Group commit: many writers, one transaction per few milliseconds (DESIGN.md, Audit).

Each `submit` waits until its item is durable. Items that arrive while a batch is being
written form the next batch, so under load a transaction carries many items and durability
costs little throughput; when idle, an item is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, write: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int = 500
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def submit(self, item: T) -> R:
        """Queue an item and return once it is written (or raise what the write raised)."""
        if self._task is None:
            raise RuntimeError("group commit is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:  # every waiter of the batch learns the write failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            finally:
                for _ in batch:
                    self._queue.task_done()
