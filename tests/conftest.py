"""Shared fixtures and helpers: deadlines instead of sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for_condition(condition: Callable[[], Any], *, timeout_s: float, what: str,
                             interval_s: float = 0.02) -> Any:
    """Poll ``condition`` (sync or async) until truthy; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        await asyncio.sleep(interval_s)
