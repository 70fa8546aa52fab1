"""Pure parts of the CLI: option parsing, formatting, record rendering, exit codes of usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from raftmq.client.types import ConsumerRecord
from raftmq.cluster.errors import NotLeader, TopicAlreadyExists, UnknownTopicOrPartition

from raftmq.cli import cli
from raftmq.cli.common import (
    fmt_bytes,
    fmt_duration_ms,
    fmt_ms,
    hint_for,
    normalize_acks,
    parse_bootstrap,
    parse_comma_choice,
)
from raftmq.cli.consume_cmd import format_json, format_text
from raftmq.cli.produce_cmd import _split, generated_value


def test_parse_bootstrap_normalizes_and_dedups() -> None:
    assert parse_bootstrap(" http://a:1/, b:2 ,http://a:1,") == ["http://a:1", "http://b:2"]
    with pytest.raises(click.BadParameter):
        parse_bootstrap(" , ")
    with pytest.raises(click.BadParameter):
        parse_bootstrap("ftp://a:1")


def test_parse_comma_choice() -> None:
    assert parse_comma_choice("all, 1,all", ["0", "1", "all"], "--acks") == ["all", "1"]
    with pytest.raises(click.BadParameter, match="7"):
        parse_comma_choice("all,7", ["0", "1", "all"], "--acks")
    assert normalize_acks("-1") == "all" and normalize_acks("0") == 0


def test_formatting() -> None:
    assert fmt_bytes(-1) == "unlimited" and fmt_bytes(64 * 1024 * 1024) == "64 MiB"
    assert fmt_bytes(1536) == "1.5 KiB"
    assert fmt_duration_ms(604_800_000) == "7 d" and fmt_duration_ms(1500) == "1500 ms"
    assert fmt_ms(0.0042) == "4.20 ms" and fmt_ms(None) == "-"


def test_every_error_shown_has_a_next_step() -> None:
    assert "raftmq topic create" in hint_for(UnknownTopicOrPartition("x"))
    assert "raftmq topic delete" in hint_for(TopicAlreadyExists("x"))
    assert hint_for(NotLeader("x"))


def test_stdin_line_splitting_and_generated_values() -> None:
    assert _split(b"k:v:w\n", b":", None) == (b"k", b"v:w")
    assert _split(b"no-separator\r\n", b":", b"dflt") == (b"dflt", b"no-separator")
    assert _split(b"plain", None, None) == (None, b"plain")
    value = generated_value(42, 30)
    assert len(value) == 30 and value.startswith(b"0000000042 ")
    assert len(generated_value(7, 4)) == 4 and generated_value(7, 0) == b""


def test_record_rendering() -> None:
    headers = (("h", b"x"), ("b", b"\xfe"))
    record = ConsumerRecord("t", 2, 17, 1_700_000_000_000, b"k\xff", b"hello world", headers)
    assert format_text(record) == "2 17 k\\xff hello world"
    assert format_text(record._replace(key=None)) == "2 17 - hello world"
    obj = json.loads(format_json(record))
    assert obj["key"] is None and obj["key_b64"] == "a/8=" and obj["value"] == "hello world"
    assert obj["headers"] == [["h", "x"], ["b", {"b64": "/g=="}]]
    assert (obj["topic"], obj["partition"], obj["offset"]) == ("t", 2, 17)


@pytest.mark.parametrize("args", [
    ["produce", "t", "--acks", "2"],
    ["consume", "t", "--offset", "1", "--from-beginning"],
    ["bench", "produce", "--durability", "sometimes"],
    ["bench", "produce", "--bootstrap", "http://127.0.0.1:1", "--durability", "never"],
    ["cluster", "up", "--nodes", "0"],
    ["topic", "create", "t", "--partitions", "0"],
    ["node", "start"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "something").write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(folder)])
    assert result.exit_code == 2 and "not empty" in result.output


def test_node_start_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("broker_id = 0\n")
    result = CliRunner().invoke(cli, ["node", "start", "--config", str(config)])
    assert result.exit_code == 2
