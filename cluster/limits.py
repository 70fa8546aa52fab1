"""Every limit and default timeout in one place, units last in the name, with the reason beside it.

Relations between limits are asserted at import time so that a bad edit fails at once, not under load.
Node and topic settings may override the defaults named ``*_default``; the ``*_max`` values are hard caps
that protect the broker's memory and the shared Raft thread.

No I/O here.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# --- records and batches ------------------------------------------------------------------------

# One record's key + value + header bytes. Kafka's default message.max.bytes is ~1 MiB.
record_bytes_max: Final = 1 * MIB
# One record batch as it travels in a produce request and as one Raft entry. pysyncobj sends an entry at
# or above its appendEntriesBatchSizeBytes in chunks whose end it detects by the wrong length (followers
# fail to unpickle it and the entry can be discarded), so the Raft batch size below must stay strictly
# larger than this.
batch_bytes_max: Final = 1 * MIB + 4 * KIB
# Records in one batch: bounds the per-batch validation work on the broker.
batch_records_max: Final = 100_000
# Record timestamps (ms since the epoch) are int64 in the batch header, and never negative.
timestamp_ms_max: Final = 2**63 - 1
# Header keys are short identifiers; values are bytes counted in record_bytes_max.
header_key_chars_max: Final = 256
headers_per_record_max: Final = 64
# An HTTP request body: one batch plus envelope.
request_bytes_max: Final = batch_bytes_max + 64 * KIB

# --- Raft (pysyncobj) ---------------------------------------------------------------------------

raft_append_entries_bytes_max: Final = 2 * MIB  # pysyncobj appendEntriesBatchSizeBytes
# Bytes proposed to a partition group but not yet committed; above it produce answers BUFFER_FULL
# (pysyncobj advances a follower's next index optimistically with no window: with more than a few MB in
# flight per group it resends and stalls).
raft_uncommitted_bytes_max: Final = 4 * MIB
raft_uncommitted_entries_max: Final = 256
# One peer-link frame (a Raft message of one group). Anything larger is a protocol error. pysyncobj fills an
# AppendEntries up to appendEntriesBatchSizeBytes and then adds the entry that crosses it, so a frame can
# hold the batch size plus one whole entry.
peer_frame_bytes_max: Final = raft_append_entries_bytes_max + batch_bytes_max + 256 * KIB
# Bytes queued for one peer link before the link is cut (the peer is too slow or gone). Raft resends.
peer_send_buffer_bytes_max: Final = 64 * MIB
# Snapshot stream chunk (pysyncobj logCompactionBatchSize): one frame of a follower catch-up.
snapshot_chunk_bytes: Final = 256 * KIB
# Journal compaction: a snapshot is taken after this many entries or bytes since the last one.
raft_compaction_entries: Final = 20_000
raft_compaction_bytes: Final = 128 * MIB
raft_compaction_interval_s: Final = 120.0
# Journal entries kept in memory (the tail the leader is still sending); older ones are read from disk.
journal_cache_bytes_max: Final = 8 * MIB
# pysyncobj's command queue per group (commands waiting for the tick thread).
raft_command_queue_max: Final = 10_000
# Threads that fsync journals in parallel at the end of a replication pass (a fixed pool: the thread
# count never depends on the partition count).
fsync_threads: Final = 4
# The replication thread looks this often for groups whose timers are due; groups with news are ticked at once.
replication_sweep_interval_s: Final = 0.02
# A group with no news is ticked when a pysyncobj timer is due (RaftGroup._next_timer_s), and at least this
# often (pysyncobj's once-a-second journal meta flush and its compaction timer run in a tick).
replication_idle_tick_max_s: Final = 1.0
# A leader republishes its status at least this often: its in-sync set ages with time (replica_lag_time_max_s).
replication_status_refresh_s: Final = 0.25
# The replication thread runs calls from other threads (group opening, membership changes) for at most this
# long per pass, then polls, pings and ticks before it goes on (node/replication.py, ReplicationLoop._run_calls).
replication_calls_budget_s: Final = 0.05
# ... and ticks dirty groups for at most this long per pass (the others are ticked first in the next pass).
replication_tick_budget_s: Final = 0.1
# A leader whose group has had nothing to do for this long asks its followers to go quiet (node/quiescence.py).
raft_quiesce_after_s: Final = 0.5
# A quiet follower whose link to the leader goes down campaigns within this (the link timeout already waited).
raft_quiesce_wake_window_s: Final = 0.1
# Retention, leader balance, journal compaction checks and link statistics run this often.
housekeeping_interval_s: Final = 1.0
# Bytes queued on a peer link above which snapshot chunks wait (flow control instead of cutting the link).
snapshot_inflight_bytes_max: Final = 4 * MIB
# Journal slices longer than this many entries are read lazily from disk (a lagging follower's catch-up
# never materialises a large range in memory).
journal_lazy_slice_entries: Final = 64

# Raft timers (seconds). pysyncobj validate() requires min > 3 * append period, max > min,
# connection timeout >= max, fallback > append period; we also assert them here because
# pysyncobj's checks are `assert`s that vanish under `python -O`.
raft_election_timeout_min_s: Final = 0.3
raft_election_timeout_max_s: Final = 0.6
raft_heartbeat_period_s: Final = 0.075
# A peer link that received nothing (not even a ping) for this long is closed. It is the failure detector of
# quiet groups (node/quiescence.py), so it is short; pings keep a live idle link well inside it.
raft_connection_timeout_s: Final = 0.8
# A leader that hears from no majority for this long steps down (CheckQuorum); meanwhile the broker refuses
# writes it could not commit anyway. Above the election timeout, so a leader is only deposed after a
# follower could already have replaced it.
raft_leader_fallback_timeout_s: Final = 0.7
peer_connect_retry_s: Final = 0.5
# One recv() on a peer link, and the bytes read from one link per poll (so a busy link cannot starve the
# others); buffers handed to one sendmsg().
peer_recv_chunk_bytes: Final = 256 * KIB
peer_recv_budget_bytes: Final = 4 * MIB
peer_send_buffers_per_call: Final = 64
# A link with nothing to send pings this often, well inside raft_connection_timeout_s.
peer_ping_interval_s: Final = 0.2
# Above this many queued bytes a link drops Raft AppendEntries (Raft resends) instead of queueing more.
peer_send_buffer_soft_bytes: Final = 8 * MIB
# Kernel socket buffers of a peer link (SO_SNDBUF / SO_RCVBUF): a few AppendEntries in flight.
peer_socket_buffer_bytes: Final = 4 * MIB
peer_handshake_timeout_s: Final = 3.0
# A frame from a peer that has not finished the handshake (CHALLENGE, HELLO, REJECT are a few dozen bytes):
# an unauthenticated connection can make the broker buffer no more than this.
peer_handshake_frame_bytes_max: Final = 4 * KIB
# Accepted connections still in the handshake; past it the oldest is closed, so a flood of connections
# that never authenticate cannot exhaust file descriptors or lock real brokers out.
peer_pending_connections_max: Final = 32
# A follower counts as in sync if it answered the leader within this window.
replica_lag_time_max_s: Final = 2.0

# --- the broker's own loops ----------------------------------------------------------------------

# A metadata change (create/delete topic, producer id) must commit within this long, else REQUEST_TIMED_OUT.
metadata_request_timeout_s: Final = 10.0
# While the metadata group elects a leader, a proposal is retried this often (within its deadline).
metadata_retry_s: Final = 0.1
# The replica manager compares the partitions this broker hosts with the metadata at least this often
# (and at once whenever the topics change).
reconcile_interval_s: Final = 1.0
# A learner's copy of the metadata is encoded while the replication thread applies: tries before giving up.
metadata_export_attempts_max: Final = 20
# The controller: how often it checks liveness and drives moves, and how long one step request may take.
controller_tick_s: Final = 0.25
move_step_timeout_s: Final = 5.0
# Partitions a heartbeat may report as led (bounds the request and the controller's leaders table).
heartbeat_partitions_max: Final = 100_000
# After creating a topic, the answer waits up to this long for every partition to have a leader.
topic_leaders_wait_s: Final = 10.0
# Opening partition logs, deleting directories, reading for fetches: a fixed pool, whatever the partition
# count. Reads that wait on the disk never hold up the event loop.
io_threads: Final = 4
# A clean stop (SIGTERM) gets this long before the process exits anyway.
shutdown_timeout_s: Final = 15.0
# The broker raises its soft open-files limit toward this (segments plus http_connections_max sockets; a
# common soft default of 1024 is not enough for both).
open_files_soft_limit_wanted: Final = 65_536
# A broker forwarding admin requests to the controller: pooled connections, and the connect deadline.
forward_connections_max: Final = 8
forward_connect_timeout_s: Final = 3.0

# --- the client port (HTTP) ---------------------------------------------------------------------

# Open client connections per broker (file descriptors). At the cap the longest-idle connection makes room;
# if every one is busy, new ones get 503 TOO_MANY_CONNECTIONS. Node setting: http_connections_max.
http_connections_max: Final = 1024
# A request line and headers must arrive within this long (from the connection's start, or from the first
# byte of the next request on a kept-alive connection): slowloris connections are closed.
http_request_head_timeout_s: Final = 10.0
# A request body must arrive within this long once its head did (1 MiB at >= 35 KiB/s).
http_request_body_timeout_s: Final = 30.0
# A kept-alive connection with no request for this long is closed. Above the client library's idle
# timeout (client_keepalive_timeout_s, 30 s), so the client closes an idle connection before the broker does.
http_idle_timeout_s: Final = 60.0
# Connections the kernel queues on the client port before the broker accepts them.
http_listen_backlog: Final = 512

# --- produce / fetch ----------------------------------------------------------------------------

produce_timeout_ms_default: Final = 10_000
produce_timeout_ms_max: Final = 120_000
fetch_bytes_max_default: Final = 1 * MIB
fetch_bytes_max: Final = 8 * MIB
fetch_wait_ms_max: Final = 30_000
# Long-poll fetches waiting at once on one broker; beyond it fetches answer at once (empty).
fetch_waiters_max: Final = 1024

# --- idempotent producer ------------------------------------------------------------------------

# Batches remembered per producer per partition for duplicate detection (Kafka keeps 5).
producer_batches_remembered: Final = 5
# Producers remembered per partition; the least recently active is forgotten first.
producers_per_partition_max: Final = 10_000
# A producer idle (by record timestamps in the log) for longer than this is forgotten.
producer_idle_ms_max: Final = 7 * 24 * 3600 * 1000
# Producer epochs are int16, as in Kafka (they count the instances of a named producer; past the maximum
# it stays there: fencing is by producer id, see cluster/metadata.py).
producer_epoch_max: Final = 2**15 - 1
# Named producers the metadata remembers (name -> current id, epoch), least recently initialised forgotten
# first, and fenced ids remembered (oldest forgotten first: it could write again). ~100 bytes each.
producer_names_max: Final = 100_000
producer_fenced_max: Final = 100_000
producer_name_chars_max: Final = 255
# How long a partition leader waits for its copy of the metadata to learn a producer id it has not seen
# yet (allocated on the metadata leader a moment ago) before answering UNKNOWN_PRODUCER_ID.
producer_metadata_wait_ms: Final = 2_000

# --- topics -------------------------------------------------------------------------------------

topic_name_chars_max: Final = 249
# Issue 10 asks for 4,096. On the 2-core development machine with nothing else running, `raftmq bench idle
# --partitions 4096` (one topic, 3 brokers, RF 3) answered the create in 10.3 s and had every leader after 138 s;
# idle, each broker then used 8-16 % of a core, ~176 MiB RSS (31 KiB per idle partition), 8 threads, 16,400 fds.
# What made it possible: quiet idle groups (node/quiescence.py) and the per-pass budgets of the replication
# thread (replication_calls_budget_s, replication_tick_budget_s). On a loaded machine (load average 7-10) an
# earlier attempt failed: the replication thread, busy opening groups and fsyncing their first terms, let peer
# links time out and every timeout woke the quiet groups of that peer. What would make creation faster and
# robust under load: group opening and term fsyncs off the replication thread, and a link liveness that does
# not depend on that thread's pass time. Other limits that follow: partition numbers in requests are parsed up
# to partition_number_max; a heartbeat lists at most heartbeat_partitions_max leaders; /v1/metadata with 4,096
# partitions is about 1 MB, below client_response_bytes_max; a create-topic answer waits at most
# topic_leaders_wait_s for leaders and then answers anyway (node/service.py).
partitions_per_topic_max: Final = 4_096
# A partition number in a request path (int32, as in Kafka); above partitions_per_topic_max it cannot exist.
partition_number_max: Final = 2**31 - 1
topics_max: Final = 1_000
segment_bytes_default: Final = 64 * MIB
segment_bytes_min: Final = 64 * KIB
# Index positions are u32 and a segment holds at most segment_bytes plus one batch: keep both below 2 GiB.
segment_bytes_max: Final = 1024 * MIB
# Old segments whose .log stays open (plus their index columns): bounds fds and memory whatever the log's
# size; a read from a segment outside it costs one open() and one index load.
log_open_segments_max: Final = 16
# A read that a concurrent truncation (Raft divergence) invalidated is done again at most this often.
log_read_attempts: Final = 3
# Recovery and rebuild scans read a .log in chunks this large: few syscalls, bounded memory.
segment_scan_chunk_bytes: Final = 1 * MIB
# Lookups scan headers forward from an index entry, about index_interval_bytes: small reads suffice.
segment_lookup_chunk_bytes: Final = 16 * KIB
segment_ms_default: Final = 7 * 24 * 3600 * 1000
retention_ms_default: Final = 7 * 24 * 3600 * 1000
retention_bytes_default: Final = -1  # unlimited, as in Kafka
index_interval_bytes_default: Final = 4 * KIB
retention_check_interval_s: Final = 5.0

# --- client -------------------------------------------------------------------------------------

client_request_timeout_ms_default: Final = 15_000
client_linger_ms_default: Final = 5
client_batch_bytes_default: Final = 256 * KIB
client_buffer_bytes_default: Final = 32 * MIB
client_delivery_timeout_ms_default: Final = 60_000
client_retry_backoff_ms_default: Final = 100
client_retry_backoff_ms_max: Final = 2_000
# While a partition has no leader (an election: about one election timeout), retries back off at most this
# long, so a producer finds the new leader within this of its election instead of sleeping through it with
# the general backoff (which grows to client_retry_backoff_ms_max).
client_leader_retry_backoff_ms_max: Final = 150
# A producer whose request has waited this long at the leader asks the other brokers whether leadership
# moved (a paused or cut-off leader neither answers nor refuses), then again every interval while it waits;
# each broker gets the probe timeout. On a newer leader it resends there at once (an idempotent producer
# with the same producer id and sequence, so the record is stored once even if the old leader had
# replicated it).
client_leader_probe_after_ms: Final = 300
client_leader_probe_interval_ms: Final = 200
client_leader_probe_timeout_ms: Final = 250
client_metadata_max_age_ms: Final = 30_000
client_fetch_prefetch_bytes_max: Final = 16 * MIB
# A response is at most one fetch (8 MiB of batches) plus its envelope.
client_response_bytes_max: Final = fetch_bytes_max + 1 * MIB
# TCP connect (a dead broker must not eat the whole request deadline).
client_connect_timeout_ms_default: Final = 3_000
# The pool: total and per broker. A producer keeps one request in flight per partition, so the per-broker
# limit bounds the concurrency one broker sees from one client; excess requests queue (inside their deadline).
client_pool_connections_max: Final = 256
client_pool_connections_per_broker_max: Final = 64
# Request bodies above this size are streamed from a file object instead of passed as bytes.
client_stream_body_bytes: Final = 512 * KIB
# A metadata refresh asks brokers in turn; none gets less than this (a loopback round trip is ~1 ms).
client_metadata_broker_s_min: Final = 0.25
# Keys whose partition the producer remembers (cleared when full): bounds that cache's memory.
client_key_partition_cache_max: Final = 65_536
# A send attempt needs at least this much of its delivery deadline left; less cannot complete a round trip.
client_attempt_s_min: Final = 0.005
# poll() returns at most this many records by default (one call's work stays bounded).
client_poll_records_max_default: Final = 500
# How long an idle fetcher waits for prefetch room before re-checking its state (not a network wait).
client_prefetch_wait_s: Final = 5.0
# Idle keep-alive connections in the client's pool are closed after this long (below http_idle_timeout_s).
client_keepalive_timeout_s: Final = 30.0

# --- relations ----------------------------------------------------------------------------------

assert batch_bytes_max < raft_append_entries_bytes_max, "entries must never take pysyncobj's chunked path"
assert record_bytes_max < batch_bytes_max
assert request_bytes_max > batch_bytes_max
assert peer_frame_bytes_max > raft_append_entries_bytes_max + batch_bytes_max
assert raft_uncommitted_bytes_max >= 2 * batch_bytes_max, "two full batches must fit in flight"
assert raft_election_timeout_min_s > 3 * raft_heartbeat_period_s
assert raft_election_timeout_max_s > raft_election_timeout_min_s
assert raft_connection_timeout_s >= raft_election_timeout_max_s
assert raft_leader_fallback_timeout_s > raft_heartbeat_period_s
assert replica_lag_time_max_s > raft_heartbeat_period_s * 3
assert fetch_bytes_max >= batch_bytes_max, "a fetch must be able to return the largest batch"
assert segment_bytes_max + batch_bytes_max < 2**31, "index positions (u32) and file offsets stay below 2 GiB"
assert peer_ping_interval_s < raft_connection_timeout_s / 2, "a live idle link must never time out"
assert client_batch_bytes_default <= batch_bytes_max
assert http_idle_timeout_s > client_keepalive_timeout_s, "the client must close an idle connection first"

# --- hostile neighbour (chaos/hostile.py; issue 12) ------------------------------------------------------
# What the chaos suite's hostile neighbour throws at a running cluster, bounded in count and rate, and the
# bounds its verdict holds the brokers to. The brokers' own defences are the limits above (http_*,
# peer_handshake_*); these only size the attack and the judgement.

# Connections at once spraying random bytes at one broker's peer port, and how long one waits to be thrown
# out (the broker's handshake deadline is peer_handshake_timeout_s) before it counts as "held".
hostile_peer_connections_max: Final = 4
hostile_peer_wait_s: Final = peer_handshake_timeout_s + 2.0
hostile_peer_interval_s: Final = 0.05
hostile_garbage_bytes_max: Final = 8 * KIB
# Concurrent malformed-request workers over every client port, their total rate, and the largest body.
hostile_http_workers_max: Final = 4
hostile_http_requests_per_s: Final = 50.0
hostile_body_bytes_max: Final = 64 * KIB
hostile_http_answer_timeout_s: Final = 5.0
# Idle and slowloris connections held over the client ports (well below http_connections_max: the cap's
# eviction is not what is tested here, the head deadline is), and the dribble period of the slow ones.
hostile_slow_connections_max: Final = 300
hostile_dribble_interval_s: Final = 1.0
# Fetches whose answers are never read, with a tiny receive buffer: the broker must not buffer without
# bound for them.
hostile_stuck_consumers_max: Final = 20
hostile_stuck_rcvbuf_bytes: Final = 4 * KIB
hostile_connect_timeout_s: Final = 5.0
hostile_read_bytes_max: Final = 64 * KIB
# After the step ends: its tasks finish (bounded), then are cancelled.
hostile_wind_down_s: Final = 5.0
# The verdict: the well-behaved producers' p99 latency (ok sends started while the neighbour runs) and each
# broker's resident memory must stay below these. The p99 bound is the producers' request timeout's order:
# a neighbour that pushes honest clients to their timeouts has starved them.
hostile_producer_p99_ms_max: Final = 1_000.0
hostile_broker_rss_bytes_max: Final = 512 * MIB

# --- Kafka-protocol listener (node/kafka_listener.py) ------------------------------------------------

# Largest request frame accepted (after the int32 size). A Produce request carries one or more whole
# batches; librdkafka's default message.max.bytes is 1,000,000, so 4 MiB leaves room for several
# partitions in one request without letting one connection hold much memory. Larger: the connection is
# closed (what a Kafka broker does past socket.request.max.bytes).
kafka_request_bytes_max: Final = 4 * MIB
# Requests read from one connection and not yet answered. Clients pipeline (librdkafka up to 5 per
# connection for idempotence, kafka-python 5): past this the listener stops reading until the oldest is
# answered, so one connection's work stays bounded. Responses always go back in request order.
kafka_inflight_per_connection_max: Final = 8
# Open Kafka connections per broker; a new one past this is closed at once (clients back off, retry).
kafka_connections_max: Final = 1024
# Once a frame's first byte arrived, the rest must arrive within this (a stalled sender is cut).
kafka_frame_read_timeout_s: Final = 30.0
# A connection with no request for this long is closed (Kafka's connections.max.idle.ms is 9 min; clients
# reconnect transparently). Keeps idle sockets from piling up.
kafka_idle_timeout_s: Final = 540.0
# A compressed batch may not inflate past this when its records are checked or read (a decompression bomb
# cannot grow memory further); stored compressed, the batch itself stays within batch_bytes_max.
kafka_decompressed_batch_bytes_max: Final = 2 * batch_bytes_max
# Elements of any one array in a request (topics, partitions, ...): bounds decode work per request.
kafka_array_elements_max: Final = 10_000
# A Fetch's long poll (max_wait_ms) is capped here, as the HTTP fetch is.
kafka_fetch_wait_ms_max: Final = fetch_wait_ms_max
# A whole Fetch response is at most this many record bytes, whatever the client asks (max_bytes).
kafka_fetch_response_bytes_max: Final = fetch_bytes_max
# Writing one response to a client that does not read must not block the connection forever.
kafka_write_timeout_s: Final = 30.0

# --- consumer groups (cluster/consumer_groups.py, node/group_coordinator.py) -----------------------

# Partitions of the internal group-state topic. Kafka uses 50; here each partition is a Raft group whose idle
# heartbeats cost CPU on every replica (README "Idle partitions"), and groups spread over these by hash, so a
# handful is enough for the group counts a cluster of this size serves. Fixed at the topic's creation.
group_state_partitions: Final = 5
group_id_chars_max: Final = 255  # Kafka's limit for group.instance.id; a group id this long is a mistake
group_members_max: Final = 1_000  # Kafka's group.max.size is unbounded; one heartbeat reconcile walks them all
group_subscription_topics_max: Final = 1_000
# Groups (consumer and share groups each) on one group-state partition, and committed offsets per group: the
# whole state of a partition is in memory and in every snapshot.
group_state_groups_max: Final = 10_000
group_offsets_max: Final = 100_000
# Offsets in one commit request (one per owned partition): bounds the Raft entry and the apply work.
group_commit_offsets_max: Final = 10_000
offset_metadata_chars_max: Final = 4_096  # Kafka's offset.metadata.max.bytes
# A member's session timeout (Kafka 848: group.consumer.session.timeout.ms 45 s, min 45 s; ours allows short
# sessions so that tests and small clusters move partitions quickly).
group_session_timeout_ms_default: Final = 10_000
group_session_timeout_ms_min: Final = 100
group_session_timeout_ms_max: Final = 300_000
# How long a member may take to release revoked partitions before the coordinator removes it.
group_rebalance_timeout_ms_default: Final = 30_000
group_rebalance_timeout_ms_max: Final = 600_000
# A member heartbeats every session timeout / this (Kafka's 45 s / 5 s is 9); three missed beats are tolerated.
group_heartbeats_per_session: Final = 3
# How often the coordinator looks for expired sessions and revocations that took too long.
group_session_check_interval_s: Final = 0.05
# A group with no members is deleted, with its committed offsets, once it has had no member and no commit for
# this long (Kafka's offsets.retention.minutes, 7 days): otherwise every group ever used would be kept forever
# (up to group_state_groups_max per group-state partition, after which new groups are refused). A consumer that
# comes back later starts from auto_offset_reset, as in Kafka.
group_offsets_retention_ms: Final = 7 * 24 * 3600 * 1000
# How often the coordinator looks for such groups (cheap: one pass over the groups it leads).
group_offsets_expiry_check_interval_s: Final = 60.0
# A group request waits at most this long for its Raft entry to commit.
group_request_timeout_ms: Final = 5_000
# The client's auto-commit interval (Kafka auto.commit.interval.ms).
client_auto_commit_interval_ms_default: Final = 5_000

assert group_session_timeout_ms_min <= group_session_timeout_ms_default <= group_session_timeout_ms_max
assert group_heartbeats_per_session >= 2, "one lost heartbeat must not expire a session"
# A group command as proposed (one Raft entry, stored as one record of the group-state partition).
group_command_bytes_max: Final = 512 * KIB
assert group_command_bytes_max < record_bytes_max, "a group command is stored as one record"
# A member that is not at its target assignment yet heartbeats at least this often: each of its heartbeats
# acknowledges a release or picks up partitions others released, so this bounds the rebalance time.
group_reconcile_heartbeat_interval_ms: Final = 100

# --- retries and dead letters (cluster/dead_letters.py, client/dead_letter.py) -----------------------------

client_retry_attempts_default: Final = 3  # handler runs per record before it is parked in <topic>.DLT
client_retry_backoff_ms_base_default: Final = 100
client_retry_backoff_ms_cap_default: Final = 10_000
dlt_error_chars_max: Final = 1_000  # the dlt.error header: enough for a message, bounded for a traceback

# --- share groups (cluster/share_groups.py) ----------------------------------------------------------------

# Record states kept per share partition past its start offset: acquisition stops there, so the state (and
# each acquire's walk) stays bounded while an unacknowledged record holds the window's start.
share_window_records_max: Final = 2_000
share_acquire_records_max: Final = 500  # records one acquire may lock (one poll's worth)
share_lock_ms_min: Final = 100
share_lock_ms_max: Final = 3_600_000  # a visibility timeout of an hour; longer means a stuck consumer
share_lock_ms_default: Final = 30_000  # SQS's default visibility timeout
share_max_deliveries_default: Final = 5  # Kafka's group.share.delivery.count.limit
assert share_acquire_records_max <= share_window_records_max

# --- exchanges and routing (cluster/exchanges.py, node/publish.py) ------------------------------------------

exchanges_max: Final = 1_000  # exchanges in the cluster (each travels in every metadata snapshot)
exchange_bindings_max: Final = 1_000  # bindings of one exchange: a fanout publish appends to each bound topic
exchange_name_chars_max: Final = 249  # the topic name limit
routing_key_bytes_max: Final = 255  # AMQP's shortstr
binding_headers_max: Final = 32  # header values one headers binding compares
exchange_alternate_hops_max: Final = 4  # alternate exchanges followed before a record counts as unroutable
# Destinations (topic partitions) one publish appends to at once; more wait for a slot. Bounds the produce
# requests one publish keeps in flight, whatever the number of bindings.
publish_destinations_parallel_max: Final = 16
# Push consumers (cluster/push.py, node/push.py): at most `prefetch` records unacknowledged per connection, so
# the broker holds at most push_prefetch_max records (each at most record_bytes_max) for one consumer.
push_prefetch_default: Final = 10
push_prefetch_max: Final = 1_000
push_topics_max: Final = 100  # topics one push subscription reads
push_connections_max: Final = 256  # push WebSockets one broker serves at once (each holds its prefetch window)
# A consumer that does not read its socket for this long (a send does not drain) is disconnected; its records
# are released to the group.
push_send_timeout_s: Final = 30.0
# How often an idle push session looks at the watermarks of partitions it does not host (reads, not Raft
# entries: it acquires, one Raft entry, only when a partition has records it has not seen, or locks expired).
push_idle_poll_s: Final = 0.2
push_rescan_s: Final = 1.0  # at most one acquire (Raft entry) per idle partition and push session this often
push_read_timeout_s: Final = 10.0  # a push session's read of watermarks or records from another broker
push_heartbeat_s: Final = 10.0  # WebSocket pings: a consumer gone without a close is noticed within two

# --- Kafka's classic group protocol (cluster/kafka_classic_group.py, node/kafka_groups.py) -------------

# A group that had no members waits this long after its first JoinGroup before it forms a generation, so
# consumers starting together share the first one instead of rebalancing once per member. Kafka's
# group.initial.rebalance.delay.ms is 3 s; a raftmq cluster is usually smaller and tests start consumers
# together.
kafka_group_initial_delay_ms: Final = 500
# The longest a join phase waits for the current members to rejoin (Kafka waits the members' rebalance
# timeout, which is max.poll.interval.ms, 5 minutes by default in every client: one crashed member whose
# session has not expired yet would stall its group that long). A member that has not rejoined by then is
# removed; an expired member is not waited for at all.
kafka_group_rebalance_wait_ms_max: Final = 30_000
# How often a join phase in progress rechecks its members (expiries end the wait early) and restarts the
# sessions of the members blocked in JoinGroup (clients do not heartbeat while they wait).
kafka_group_phase_check_interval_s: Final = 0.1
# Groups with classic rendezvous state on one coordinator; a JoinGroup for a further group is answered
# COORDINATOR_NOT_AVAILABLE (retriable) until some group empties.
kafka_classic_groups_max: Final = group_state_groups_max * group_state_partitions

# --- storage faults: a replica whose disk refuses writes (node/replication.py, node/journal.py) ------------

# A replica taken out of its group by a failed write or fsync probes its disk at every housekeeping pass
# (housekeeping_interval_s) by writing, fsyncing and deleting a file of this size next to its journal.
journal_probe_bytes: Final = 4 * KIB  # one page: what the smallest real append needs

# --- idempotent exchange publishes (cluster/publish.py, cluster/producer_state.py) ---------------------------

# Per partition, the idempotent publishes remembered for duplicate detection (one entry per publish that
# appended there, least recently active forgotten first). A retried publish is answered with its original
# offset when fewer than this many other idempotent publishes reached that partition in between; past that
# it is appended again. Each entry costs about 200 bytes of memory and 30 bytes of snapshot.
publish_producers_per_partition_max: Final = 10_000

# --- dead-letter exchanges of share groups and topics (cluster/dead_lettering.py, node/dead_lettering.py) -----

# Share groups that name a dead-letter exchange (each entry travels in every metadata snapshot).
group_dead_letters_max: Final = 10_000
# Automatic deaths (expired, over the delivery limit) a record may go through without a rejection before a
# further one archives it instead of dead-lettering it again: ends dead-letter chains that never reach a
# consumer (cycles through the same topic end at once).
dead_letter_path_topics_max: Final = 16

# --- one batch format: Kafka RecordBatch v2 everywhere (cluster/batch.py) ------------------------------------

# The leader checks every record of a produced batch before proposing it (compiled, about 4 M records/s
# uncompressed). A compressed batch is decompressed for that: one larger than this (compressed) is checked
# on the I/O pool, so one big gzip batch does not stall the event loop (every connection's requests) for
# milliseconds. Smaller ones, and uncompressed ones of any size (at most ~0.3 ms), are checked in place.
compressed_batch_check_inline_bytes_max: Final = 16 * KIB
