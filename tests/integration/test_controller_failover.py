"""The controller (the metadata group's leader) SIGKILLed while topics are being created, on real broker
processes: every create either made its topic or failed with a definite error; none is half made."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from raftmq.cluster.errors import error_class_for
from raftmq.deploy.local_cluster import http_json, wait_until

from tests.integration.conftest import start_cluster

CREATES = 16


def _create(url: str, name: str) -> tuple[str, int, Any]:
    status, body = http_json(f"{url}/v1/topics", method="POST", body={"name": name, "partitions": 2},
                             timeout_s=30)
    return name, status, body


def test_killing_the_controller_while_topics_are_created(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    try:
        controller = wait_until(lambda: cluster.metadata(1).get("controller_id"), timeout_s=20, what="a controller")
        asker = next(b for b in cluster.nodes if b != controller)
        url = cluster.nodes[asker].url
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(_create, url, f"t{i}") for i in range(CREATES)]
            wait_until(lambda: sum(f.done() for f in futures) >= 3, timeout_s=30, what="the first creates")
            cluster.kill(controller)
            outcomes = [f.result(timeout=60) for f in futures]
        cluster.start([controller])
        cluster.wait_ready(timeout_s=30)

        def names() -> set[str]:
            return {t["name"] for t in cluster.metadata(asker)["topics"]}

        made = [name for name, status, _ in outcomes if status == 201]
        print(f"{len(made)}/{CREATES} created; others:",
              sorted({body["error"]["code"] for _, status, body in outcomes if status != 201}))
        wait_until(lambda: set(made) <= names(), timeout_s=20, what="every acknowledged create in the metadata")
        for name, status, body in outcomes:
            if status == 201:
                continue
            error = error_class_for(body["error"]["code"])
            if error.definite:
                assert name not in names(), (name, body)  # a definite failure made nothing
        assert len(made) >= 3
        for name in made:  # and what was made is whole: every partition has three replicas and a leader
            topic = next(t for t in cluster.metadata(asker)["topics"] if t["name"] == name)
            assert [len(p["replicas"]) for p in topic["partitions"]] == [3, 3]
    finally:
        cluster.stop()
