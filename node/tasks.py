"""Background tasks of the broker's rooms (replica manager, controller, session): one way to stop them."""

from __future__ import annotations

import asyncio


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has ended; its failure, if any, was logged where it happened."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; failures were logged
        pass


__all__ = ["cancel"]
