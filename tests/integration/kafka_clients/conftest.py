"""One real 3-broker cluster with Kafka listeners for every Kafka-client test module of this package
(starting one takes seconds; each test uses its own topics). A test that kills brokers starts its own."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import start_kafka_cluster


@pytest.fixture(scope="package")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_kafka_cluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
        for broker_id in cluster.nodes:  # a listener bug shows up as a traceback in a broker's log
            log = cluster.tail_log(broker_id, 2000)
            assert "Traceback" not in log, f"broker {broker_id} logged a traceback:\n{log}"


@pytest.fixture(autouse=True, scope="module")
def _finalise_third_party_sockets() -> Iterator[None]:
    """kafka-python and aiokafka leave sockets unclosed when a broker goes away under them (a third-party leak,
    not raftmq's); they would be finalised, with a ResourceWarning that the suite turns into an error, in
    whatever later test happens to run the garbage collector. Finalise them here, after each module."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
