"""kcat (Debian 12: kcat 1.7.1 on librdkafka 2.0.2, whose feature checks need exact advertised versions)
against raftmq's Kafka listener: metadata, produce at acks 0, 1 and all with idempotence, gzip, consume
from the beginning and from an offset inside a batch, and records crossing to raftmq's own HTTP API.

Method: one real 3-broker cluster for the module; each test its own topic; every kcat run is bounded by
a timeout. Skipped, saying so, where kcat is not installed (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_support import (
    CLIENT_TIMEOUT_S,
    create_topic,
    kafka_cluster,
    produce_over_http,
    read_over_http,
    unique,
)

KCAT = shutil.which("kcat")
pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install -y kcat; .ci/run "
                                                      "installs it)")]
__all__ = ["kafka_cluster"]  # the module-scoped fixture


def kcat(cluster: LocalCluster, *args: str, stdin: str = "") -> str:
    return kcat_run(cluster, *args, stdin=stdin).stdout


def kcat_run(cluster: LocalCluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert KCAT is not None
    bootstrap = cluster.kafka_bootstrap.split(",")[0]
    done = subprocess.run([KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"kcat {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done


def test_metadata_lists_every_broker_and_a_leader_for_every_partition(kafka_cluster: LocalCluster) -> None:
    topic = unique("kc-meta")
    create_topic(kafka_cluster, topic)
    metadata = json.loads(kcat(kafka_cluster, "-L", "-J", "-t", topic))
    assert sorted(b["name"] for b in metadata["brokers"]) == sorted(kafka_cluster.kafka_bootstrap.split(","))
    assert metadata["controllerid"] in {b["id"] for b in metadata["brokers"]}
    [described] = metadata["topics"]
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]
    assert all(p["leader"] in {1, 2, 3} for p in described["partitions"])


@pytest.mark.parametrize("options", [["-X", "acks=all", "-X", "enable.idempotence=true"], ["-X", "acks=0"],
                                     ["-X", "acks=1"], ["-X", "acks=all", "-z", "gzip"], ["-z", "snappy"],
                                     ["-z", "lz4"], ["-z", "zstd"]],
                         ids=["idempotent", "acks0", "acks1", "gzip", "snappy", "lz4", "zstd"])
def test_produce_then_consume_from_the_beginning_over_both_protocols(kafka_cluster: LocalCluster,
                                                                      options: list[str]) -> None:
    topic = unique("kc-produce")
    create_topic(kafka_cluster, topic)
    lines = [f"key{i % 4}:value{i}" for i in range(30)]
    produced = kcat_run(kafka_cluster, "-P", "-t", topic, "-K:", *options, "-d", "msg",
                        stdin="\n".join(lines) + "\n")
    if "-z" in options:
        # librdkafka 2.0.2 silently sends uncompressed when the advertised versions miss an exact one it
        # looks for; its debug log names the codec of every batch it sends.
        codec = options[options.index("-z") + 1]
        assert "MsgVersion 2, MsgId" in produced.stderr and f", {codec})" in produced.stderr, produced.stderr
    expected = sorted((f"key{i % 4}".encode(), f"value{i}".encode()) for i in range(30))
    over_http = read_over_http(kafka_cluster, topic, 3, 30)
    assert sorted((key, value) for _, _, key, value in over_http) == expected
    output = kcat(kafka_cluster, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%p %o %k %s\\n")
    rows = sorted(tuple(line.split(" ")) for line in output.splitlines())
    assert rows == sorted((str(p), str(o), k.decode(), v.decode()) for p, o, k, v in over_http)


def test_consume_from_an_offset_inside_a_batch_starts_exactly_there(kafka_cluster: LocalCluster) -> None:
    topic = unique("kc-offset")
    create_topic(kafka_cluster, topic, partitions=1)
    produce_over_http(kafka_cluster, topic, [(b"k", b"v%d" % i) for i in range(4)])
    output = kcat(kafka_cluster, "-C", "-t", topic, "-p", "0", "-o", "1", "-e", "-q", "-f", "%o %s\\n")
    assert output.splitlines() == ["1 v1", "2 v2", "3 v3"]
