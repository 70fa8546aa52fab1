"""Hypothesis strategies for Kafka messages: values for every field of a schema (cluster/kafka_codec.py) at
one version, so a test can draw any well-formed request or response of the APIs raftmq serves."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from raftmq.cluster.kafka_codec import Schema

_INTS = {"int8": 7, "int16": 15, "int32": 31, "int64": 63}


def _primitive(kind: str) -> st.SearchStrategy[Any]:
    if kind in _INTS:
        bits = _INTS[kind]
        return st.integers(-(2**bits), 2**bits - 1)
    if kind == "bool":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=20)
    if kind == "nullable_string":
        return st.none() | st.text(max_size=20)
    if kind == "bytes":
        return st.binary(max_size=40)
    if kind == "nullable_bytes":
        return st.none() | st.binary(max_size=40)
    raise AssertionError(kind)


def values_for(schema: Schema, version: int) -> st.SearchStrategy[dict[str, Any]]:
    """Values for every field of ``schema`` present at ``version`` (what decode must give back)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for item in schema:
        if not item.present(version):
            continue
        element = values_for(item.kind, version) if isinstance(item.kind, tuple) else _primitive(item.kind)
        if item.array:
            strategy: st.SearchStrategy[Any] = st.lists(element, max_size=3)
            fields[item.name] = st.none() | strategy if item.nullable else strategy
        else:
            fields[item.name] = element
    return st.fixed_dictionaries(fields)
