"""Broker-to-broker bodies (node/internal_api.py): hostile shapes are coded 400s; the token gates them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from raftmq.cluster.errors import InvalidRequest, InvalidTopic
from raftmq.node.internal_api import (
    INTERNAL_TOKEN_HEADER,
    check_token,
    internal_token,
    parse_heartbeat,
    parse_proposal,
    parse_step,
)

HEARTBEAT = {"broker_id": 4, "cluster_id": "c", "incarnation": 2, "url": "http://h:1", "peer": "h:2", "rack": None,
             "leads": [["t", 0, 3]]}


def test_a_good_heartbeat_parses() -> None:
    assert parse_heartbeat(HEARTBEAT)["leads"] == [["t", 0, 3]]


@pytest.mark.parametrize("change", [
    {"broker_id": "4"}, {"broker_id": 0}, {"broker_id": 2**40}, {"cluster_id": {}}, {"cluster_id": ""},
    {"incarnation": -1}, {"url": None}, {"peer": "x" * 600}, {"rack": 5}, {"leads": {}}, {"leads": [["t", 0]]},
    {"leads": [[{}, 0, 1]]}, {"leads": [["t", -1, 1]]}, {"leads": [["t", 0, "1"]]},
])
def test_hostile_heartbeats_are_invalid_requests(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_heartbeat({**HEARTBEAT, **change})


def test_steps_and_proposals() -> None:
    step = {"topic": "t", "partition": 0, "topic_id": 5, "target": [1, 2], "alive": [1, 2, 3]}
    assert parse_step(step)["target"] == [1, 2]
    with pytest.raises(InvalidTopic):
        parse_step({**step, "topic": "../x"})
    for bad in ({"target": [1] * 65}, {"alive": ["1"]}, {"partition": None}):
        with pytest.raises(InvalidRequest):
            parse_step({**step, **bad})
    assert parse_proposal({"op": 102, "payload": {"name": "t"}}) == (102, {"name": "t"})
    with pytest.raises(InvalidRequest):
        parse_proposal({"op": 102, "payload": []})


def test_the_token_is_required_only_with_a_secret() -> None:
    token = internal_token("s3cret")
    check_token(make_mocked_request("POST", "/v1/internal/heartbeat"), internal_token(""))
    check_token(make_mocked_request("POST", "/", headers={INTERNAL_TOKEN_HEADER: token}), token)
    for headers in ({}, {INTERNAL_TOKEN_HEADER: "nope"}):
        with pytest.raises(InvalidRequest) as caught:
            check_token(make_mocked_request("POST", "/", headers=headers), token)
        assert caught.value.http_status == 403
