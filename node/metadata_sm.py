"""The metadata group's state machine on a broker: ``cluster.metadata.MetadataState`` behind the
``StateMachine`` protocol of ``node.groups``.

The state is small and lives in memory; snapshots carry all of it. Readers on the asyncio thread use
``view`` (an immutable mapping swapped atomically after each change), never the live state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, BinaryIO

import msgpack
from raftmq.cluster import commands
from raftmq.cluster.dead_lettering import DeadLetterTarget
from raftmq.cluster.errors import InternalError
from raftmq.cluster.exchanges import Exchange
from raftmq.cluster.metadata import BrokerRecord, MetadataState, Topic

log = logging.getLogger(__name__)

METADATA_GROUP_ID = "meta"


class MetadataStateMachine:
    def __init__(self) -> None:
        self.state = MetadataState()
        self.applied_index = 0
        self.view: Mapping[str, Topic] = MappingProxyType({})
        self.brokers: Mapping[int, BrokerRecord] = MappingProxyType({})
        self.exchanges: Mapping[str, Exchange] = MappingProxyType({})
        self.group_dead_letters: Mapping[str, DeadLetterTarget] = MappingProxyType({})
        self.on_topics_changed: Callable[[], None] | None = None
        self._announced_version = -1
        self._announced_index = -1
        self._applied_event: asyncio.Event | None = None  # asyncio thread: waiters for any new entry

    def apply(self, index: int, term: int, command: bytes) -> Any:
        if index <= self.applied_index:
            return None
        self.applied_index = index
        try:
            decoded = commands.decode(command)
            payload = msgpack.unpackb(decoded.payload, raw=False) if decoded.payload else {}
        except ValueError:
            return InternalError("metadata entry is not a raftmq command")
        if not isinstance(payload, dict):
            return InternalError("metadata payload is not a map")
        versions = self._versions()
        result = self.state.apply(index, decoded.op, decoded.time_ms, payload)
        if versions != self._versions():
            self._publish()
        return result

    def _versions(self) -> tuple[int, int, int, int]:
        return (self.state.topics_version, self.state.brokers_version, self.state.exchanges.version,
                self.state.group_dead_letters.version)

    def _publish(self) -> None:
        self.view = MappingProxyType(dict(self.state.topics))
        self.brokers = MappingProxyType(dict(self.state.brokers))
        self.exchanges = MappingProxyType(dict(self.state.exchanges.exchanges))
        self.group_dead_letters = MappingProxyType(dict(self.state.group_dead_letters.targets))

    def restore(self, state: bytes | None) -> None:
        if state is None:
            return
        data = msgpack.unpackb(state, raw=False)
        self.state = MetadataState.from_bytes(data["state"])
        self.applied_index = int(data["applied_index"])
        self._publish()

    def snapshot(self) -> bytes:
        return msgpack.packb({"applied_index": self.applied_index, "state": self.state.to_bytes()},
                             use_bin_type=True)

    def open_snapshot_stream(self, state: bytes, peer_hint: dict[str, Any]) -> BinaryIO | None:
        return None  # the state travels whole inside the snapshot

    def bind_annotations(self, annotations: dict[str, Any]) -> None:
        return None  # the state travels whole inside the snapshot: followers need not say where they are

    def install(self, state: bytes, payload: BinaryIO) -> None:
        self.restore(state)
        log.info("metadata: installed a snapshot at index %d (%d topics)", self.applied_index, len(self.view))

    def on_progress(self) -> Callable[[], None] | None:
        if self.applied_index == self._announced_index:
            return None
        self._announced_index = self.applied_index
        version = self.state.topics_version + self.state.brokers_version
        topics_changed = version != self._announced_version
        self._announced_version = version
        on_topics_changed = self.on_topics_changed if topics_changed else None

        def notify() -> None:
            if on_topics_changed is not None:
                on_topics_changed()
            event, self._applied_event = self._applied_event, None
            if event is not None:
                event.set()

        return notify

    def applied_event(self) -> asyncio.Event:
        """Set (on the asyncio thread) the next time this replica applies a metadata entry."""
        if self._applied_event is None:
            self._applied_event = asyncio.Event()
        return self._applied_event

    def close(self) -> None:
        return None
