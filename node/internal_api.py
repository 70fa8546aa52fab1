"""The broker-to-broker routes on the client port (docs/api.md "Brokers"): heartbeats to the controller,
a learner's metadata copy, metadata commands forwarded by learners, and move steps at partition leaders.

Each body is checked field by field before the service sees it (a hostile body is a coded 400, never a
500). When the cluster has a secret, every internal request must carry ``INTERNAL_TOKEN_HEADER`` with the
token derived from it (``internal_token``), so a client that reaches the client port cannot register
brokers or move replicas.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidRequest
from raftmq.cluster.metadata import validate_topic_name

INTERNAL_TOKEN_HEADER = "X-RaftMQ-Internal-Token"


class InternalForbidden(InvalidRequest):
    """INVALID_REQUEST with status 403: an internal request without the cluster's token."""

    http_status = 403


def internal_token(secret: str) -> str:
    return hmac.new(secret.encode(), b"raftmq-internal-v1", hashlib.sha256).hexdigest() if secret else ""


def check_token(request: web.Request, expected: str) -> None:
    if expected and not hmac.compare_digest(request.headers.get(INTERNAL_TOKEN_HEADER, ""), expected):
        raise InternalForbidden("internal broker requests need the cluster's token (brokers of this cluster only)")


def _int(body: Mapping[str, Any], key: str, low: int = 0, high: int = 2**63 - 1) -> int:
    value = body.get(key)
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequest(f"{key} must be an integer between {low} and {high}", field=key)
    return value


def _text(body: Mapping[str, Any], key: str, *, optional: bool = False, chars_max: int = 512) -> str | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= chars_max or not value.isprintable():
        raise InvalidRequest(f"{key} must be 1-{chars_max} printable characters", field=key)
    return value


def _ids(body: Mapping[str, Any], key: str) -> list[int]:
    value = body.get(key)
    if not isinstance(value, list) or len(value) > 64 or any(type(b) is not int or not 0 < b < 2**31 for b in value):
        raise InvalidRequest(f"{key} must be a list of at most 64 broker ids", field=key)
    return value


def parse_heartbeat(body: Mapping[str, Any]) -> dict[str, Any]:
    leads = body.get("leads", [])
    if not isinstance(leads, list) or len(leads) > limits.heartbeat_partitions_max:
        raise InvalidRequest("leads must be a list of [topic, partition, term]", field="leads")
    checked = []
    for entry in leads:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or type(entry[1]) is not int or type(entry[2]) is not int or entry[1] < 0 or entry[2] < 0):
            raise InvalidRequest("leads must be a list of [topic, partition, term]", field="leads")
        checked.append(entry)
    return {"broker_id": _int(body, "broker_id", 1, 2**31 - 1), "cluster_id": _text(body, "cluster_id"),
            "incarnation": _int(body, "incarnation"), "url": _text(body, "url"), "peer": _text(body, "peer"),
            "rack": _text(body, "rack", optional=True, chars_max=64),
            "kafka": _text(body, "kafka", optional=True, chars_max=300), "leads": checked}


def parse_step(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"topic": validate_topic_name(body.get("topic")), "partition": _int(body, "partition", 0, 2**31 - 1),
            "topic_id": _int(body, "topic_id"), "target": _ids(body, "target"), "alive": _ids(body, "alive")}


def parse_proposal(body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise InvalidRequest("payload must be an object", field="payload")
    return _int(body, "op", 0, 255), payload


__all__ = ["INTERNAL_TOKEN_HEADER", "check_token", "internal_token", "parse_heartbeat", "parse_proposal",
           "parse_step"]
