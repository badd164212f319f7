"""Reading several gRPC server streams at once, for the compatible APIs' `n` choices: their
messages as they come, each tagged with its stream's index. Every stream is cancelled when the
reader stops (the client left, or an error), so no generation runs on for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc


def cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (rather than a call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _pump(index: int, call: grpc.aio.UnaryStreamCall, queue: asyncio.Queue) -> None:
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            await queue.put((index, message, None))
    except grpc.aio.AioRpcError as error:
        await queue.put((index, None, error))
        return
    except asyncio.CancelledError as error:
        if cancelled_from_outside():
            raise
        await queue.put((index, None, error))  # someone cancelled the call (an abort): the reader decides
        return
    await queue.put((index, None, None))


async def merged(calls: Sequence[grpc.aio.UnaryStreamCall]) -> AsyncIterator[tuple[int, Any]]:
    """(index, message) from every call until all have ended; a failed call raises its AioRpcError
    (or CancelledError, when something cancelled the call itself)."""
    if len(calls) == 1:  # the common case, without a task and a queue per message
        try:
            while (message := await calls[0].read()) is not grpc.aio.EOF:
                yield 0, message
        finally:
            calls[0].cancel()
        return
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(index, call, queue)) for index, call in enumerate(calls)]
    open_streams = len(calls)
    try:
        while open_streams:
            index, message, error = await queue.get()
            if error is not None:
                raise error
            if message is None:
                open_streams -= 1
                continue
            yield index, message
    finally:
        for task in tasks:
            task.cancel()
        for call in calls:
            call.cancel()
