"""The import rules that keep raftmq's rooms apart (raftmq/__init__.py lists them), checked on the source.

Method: parse every module of every room with ``ast`` (imports inside functions count too) and compare each
imported name with the rules: cluster/ is pure and self-contained; the client library uses only cluster/;
chaos/ and deploy/ use the node room only through its public package (its config names), never a node
module; only the two replication modules import pysyncobj; only the CLI composes the rooms.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = {"cluster": ROOT / "cluster", "node": ROOT / "node", "client": ROOT / "client", "chaos": ROOT / "chaos",
         "deploy": ROOT / "deploy", "cli": ROOT / "raftmq" / "cli"}
# cluster/ may use only these (no files, sockets, threads, event loops, processes or clocks).
PURE_STDLIB = {"__future__", "base64", "binascii", "bisect", "collections", "dataclasses", "enum", "functools",
               "hashlib", "hmac", "itertools", "json", "math", "re", "struct", "typing", "zlib"}
PURE_THIRD_PARTY = {"msgpack", "crc32c", "cramjam"}
# Single modules of larger packages: aiokafka's compiled RecordBatch v2 codec (no I/O; cluster/batch.py).
PURE_THIRD_PARTY_MODULES = {"aiokafka.record.default_records"}
PYSYNCOBJ_DOORS = {"node/replication.py", "node/raft_transport.py"}


def imports_of(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            if node.module == "raftmq":
                yield from (f"raftmq.{alias.name}" for alias in node.names)


def modules(room: str) -> list[Path]:
    return sorted(ROOMS[room].rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def room_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "raftmq" or len(parts) < 2:
        return "raftmq" if parts[0] == "raftmq" else None
    return parts[1]


def violations(room: str, allowed_rooms: set[str], extra: object = None) -> list[str]:
    found = []
    for path in modules(room):
        for name in imports_of(path):
            other = room_of(name)
            if other is not None and other != room and other not in allowed_rooms:
                found.append(f"{rel(path)} imports {name}")
    return found


def test_cluster_is_pure_and_self_contained() -> None:
    found = []
    for path in modules("cluster"):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top == "raftmq":
                if room_of(name) != "cluster":
                    found.append(f"{rel(path)} imports {name}")
            elif top not in PURE_STDLIB | PURE_THIRD_PARTY and name not in PURE_THIRD_PARTY_MODULES:
                found.append(f"{rel(path)} imports {name} (not a pure module)")
    assert found == []


def test_the_client_library_uses_only_cluster() -> None:
    assert violations("client", {"cluster"}) == []


def test_the_node_room_never_uses_client_chaos_deploy_or_the_cli() -> None:
    assert violations("node", {"cluster"}) == []


@pytest.mark.parametrize("room", ["chaos", "deploy"])
def test_chaos_and_deploy_use_the_node_room_only_through_its_public_package(room: str) -> None:
    found = []
    for path in modules(room):
        for name in imports_of(path):
            if name.startswith("raftmq.node."):
                found.append(f"{rel(path)} imports {name} (a node internal; use raftmq.node)")
            elif room_of(name) == "cli":
                found.append(f"{rel(path)} imports {name}")
            elif room == "deploy" and room_of(name) == "chaos":
                found.append(f"{rel(path)} imports {name}")
    assert found == []


def test_only_the_two_replication_modules_import_pysyncobj() -> None:
    importers = {rel(path) for room in ROOMS for path in modules(room)
                 if any(name.split(".")[0] == "pysyncobj" for name in imports_of(path))}
    assert importers == PYSYNCOBJ_DOORS


def test_the_node_package_itself_does_not_load_pysyncobj() -> None:
    """deploy/, chaos/ and the CLI import raftmq.node for its config names: that must not drag pysyncobj in."""
    imported = set(imports_of(ROOMS["node"] / "__init__.py")) | set(imports_of(ROOMS["node"] / "config.py"))
    assert {room_of(name) for name in imported if room_of(name)} <= {"cluster", "node"}
    assert all(name.split(".")[0] != "pysyncobj" for name in imported)
    assert {name for name in imported if name.startswith("raftmq.node.")} <= {"raftmq.node.config"}
