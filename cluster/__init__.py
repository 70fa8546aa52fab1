"""The pure core of raftmq, shared by every other room: what the wire and the state machines mean.

Owns the stable error codes (``errors.py``), every limit and default with its reason (``limits.py``), the
record batch format, Kafka's RecordBatch v2 (``batch.py``; record codecs in ``compression.py``), HTTP body
encoding and field parsing (``wire.py``), the envelope of a replicated command (``commands.py``), the
producer dedup decision (``producer_state.py``), the metadata state machine (``metadata.py``), replica
placement (``placement.py``), key routing (``routing.py``), and the Kafka wire protocol: primitives and
schemas (``kafka_codec.py``), the requests and versions served (``kafka_messages.py``), the batches of a
Produce or Fetch (``kafka_records.py``) and the error-code table (``kafka_errors.py``).

May import: the standard library's pure modules, msgpack, crc32c, cramjam (codecs) and aiokafka's compiled
record codec (``aiokafka.record.default_records``, nothing else of aiokafka); no other raftmq
room, and no I/O (files, sockets, threads, event loops, clocks). ``tests/unit/test_import_rules.py`` checks it.
"""
