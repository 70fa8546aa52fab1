"""A list-appending state machine for the replication-group tests (real pysyncobj groups and the memory
engine): each applied command's payload is appended; snapshots carry the whole list."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import msgpack
from raftmq.cluster import commands


class ListMachine:
    def __init__(self, *, decode: bool = True, strict: bool = False) -> None:
        """``decode``: store the command envelope's payload (else the raw command); ``strict``: an entry applied
        twice fails the test at once (else it is counted in ``applied_twice``)."""
        self.decode = decode
        self.strict = strict
        self.items: list[bytes] = []
        self.applied_index = 0
        self.applied_twice = 0
        self.installed = 0
        self.lock = threading.Lock()
        self.before_apply: Callable[[int], None] | None = None  # a test's check, on the applying thread

    def apply(self, index: int, term: int, command: bytes) -> Any:
        if self.before_apply is not None:
            self.before_apply(index)
        if index <= self.applied_index:
            assert not self.strict, f"entry {index} applied twice"
            self.applied_twice += 1
            return None
        self.applied_index = index
        with self.lock:
            self.items.append(bytes(commands.decode(command).payload) if self.decode else command)
            return len(self.items)

    def restore(self, state: bytes | None) -> None:
        if state is not None:
            items, self.applied_index = msgpack.unpackb(state)
            with self.lock:
                self.items = list(items)

    def snapshot(self) -> bytes:
        with self.lock:
            return msgpack.packb([self.items, self.applied_index])

    def open_snapshot_stream(self, state: bytes, peer_hint: dict[str, Any]) -> BinaryIO | None:
        return None

    def install(self, state: bytes, payload: BinaryIO) -> None:
        self.installed += 1
        self.restore(state)

    def bind_annotations(self, annotations: dict[str, Any]) -> None:
        return None

    def on_progress(self) -> None:
        return None

    def close(self) -> None:
        return None

    def copy(self) -> list[bytes]:
        with self.lock:
            return list(self.items)
