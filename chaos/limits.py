"""Every tunable of the chaos suite in one place (timeouts, deadlines, intervals, counts, sizes, the run's
defaults), units last in the name, with the reason beside it.

The fault proxy server has its own limits (chaos/toxiproxy/limits.py). The scenario file format's defaults
stay with the format (chaos/scenario.py), and identifiers and protocol constants stay where they are used.
Values named ``*_default`` are defaults that ``RunSettings``, ``WorkloadConfig``, the harness or the proxy
client let a caller override.

No I/O here.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# --- one run (chaos/runner.py) --------------------------------------------------------------------

# Workload seconds per run: room for several fault steps of most shipped scenarios (their steps start 10-12 s
# apart, and the run's last seconds stay fault-free).
run_duration_s_default: Final = 60.0
# Three brokers: the smallest cluster in which a majority survives one faulty broker.
cluster_nodes_default: Final = 3
# Brokers started until every one reports itself ready on its health endpoint (process up, logs opened,
# metadata group elected).
broker_ready_deadline_s: Final = 30.0
# After the topic is created, until every partition has one leader that all its replicas agree on.
topic_converge_deadline_s: Final = 30.0
# After healing: elections plus catch-up of replicas that missed writes (possibly by snapshot). A healthy
# cluster needs a few seconds; running out of 60 s is a liveness problem worth reporting.
converge_deadline_s: Final = 60.0
# After the producers stop, the nemesis normally has already undone its last step (the schedule keeps the
# run's tail fault-free); this bounds a step stuck in a proxy call or a process restart.
nemesis_finish_deadline_s: Final = 30.0
# The consumer stops at its next poll (a poll waits at most consumer_poll_timeout_ms).
consumer_stop_deadline_s: Final = 10.0
# Live progress snapshots handed to the display: twice a second is smooth enough for a human.
progress_interval_s: Final = 0.5
# Metadata polls for the leader timeline (every ~200 ms): fine enough to time an election (the brokers'
# election timeout is 0.3-0.6 s, cluster/limits.py) against the failover target.
leader_poll_interval_s: Final = 0.2
# One broker's metadata answer within a poll. A paused (SIGSTOPped) broker never answers; the poll gives
# up on it quickly so the other brokers' claims stay fresh.
leader_poll_timeout_s: Final = 0.5
# How long a step waits for "the leader" to exist before falling back to a node drawn from its pick.
leader_resolve_deadline_s: Final = 3.0
# How often a step asks the brokers for the leader while it waits for one.
leader_resolve_poll_interval_s: Final = 0.1
# A lost acknowledged send counts as "lost before a kept record" only with this many surviving later sends
# acknowledged by the same leader in the same term: one witness's drained copy could come from an earlier
# attempt of it at another leader, several independent ones cannot all.
kept_record_witnesses_min: Final = 3
# Rows of that finding kept in run.json (the count in the finding stays exact).
kept_record_rows_max: Final = 50
# Lines of a crashed broker's log quoted in its finding (the full log stays in the run directory).
crash_finding_log_lines_max: Final = 3

# --- the workload (chaos/workload.py) -------------------------------------------------------------

# The topic every run uses: three partitions so leaders spread over the brokers, three replicas with
# min.insync.replicas 2 so acks=all survives the loss of any one broker.
topic_partitions_default: Final = 3
topic_replication_factor_default: Final = 3
topic_min_insync_replicas_default: Final = 2
# Producer workers: with acks=all the first half is idempotent and the rest not, so both kinds are judged.
producer_processes_default: Final = 4
# Sends per second, all workers together: enough sends per partition to time a failover well within the
# 1 s target, few enough that three brokers on one machine (durability "always") keep up.
send_rate_per_s_default: Final = 200.0
# Keys per partition (picked with the client's routing): every partition gets traffic, and each key gets
# many sends for the checker's per-key reorder check.
keys_per_partition_default: Final = 2
# Candidate keys tried to give every partition its keys: only a bound on the search (keys spread evenly
# over the partitions, so the first few dozen normally suffice).
key_candidates_max: Final = 100_000
# Short client timeouts so that every send's outcome resolves during the run, not after it.
request_timeout_ms_default: Final = 2_000
delivery_timeout_ms_default: Final = 8_000
# Unresolved sends per worker: when the cluster stalls, the send rate drops instead of the buffer growing.
in_flight_sends_max: Final = 64
linger_ms_default: Final = 2.0
# A worker sends at most rate / processes x duration x send_count_headroom + send_count_slack values: it may
# catch up after a stall, but the run's size stays bounded (and a very short run still sends a few).
send_count_headroom: Final = 1.5
send_count_slack: Final = 10
# After a stall a worker catches up on at most this many seconds of missed sends in one burst.
send_catch_up_s_max: Final = 1.0
# Producers get the delivery timeout plus this to resolve their last sends when they stop.
producer_stop_grace_s: Final = 2.0
# Retry backoff while a producer cannot start (the cluster may be faulted right now).
producer_start_retry_s: Final = 0.5
# Characters of an unexpected exception kept as a send's "unknown" reason in the history.
unknown_reason_chars_max: Final = 80
# Topic creation goes through the metadata Raft group: a longer request timeout than the producers'.
admin_request_timeout_ms: Final = 5_000
# Creating the topic and waiting until every partition leads (retried while the metadata group elects).
topic_create_deadline_s: Final = 30.0
topic_create_retry_s: Final = 0.2
# Waiting for the new topic's leaders gets at least this long, even when creating it used up the deadline.
topic_wait_s_min: Final = 1.0
# The consumer's long poll: the broker holds a fetch at the log end up to consumer_max_wait_ms, and one poll
# returns after consumer_poll_timeout_ms when nothing arrived, so the consumer notices a stop quickly.
consumer_max_wait_ms: Final = 300
consumer_poll_timeout_ms: Final = 500
# Retry backoff while the consumer cannot start, and after a poll error (e.g. a paused partition leader).
consumer_start_retry_s: Final = 0.5
consumer_poll_retry_s: Final = 0.2
# The final drain: bytes per fetch page (the broker's default fetch size), one fetch's timeout, the backoff
# before retrying a transient error, and the deadline for draining every leader and every replica.
drain_page_bytes: Final = 1 * MIB
drain_request_timeout_s: Final = 5.0
drain_retry_s: Final = 0.2
drain_deadline_s: Final = 60.0

# --- the harness (chaos/harness.py) ---------------------------------------------------------------

# Metadata (and its peer_links) is published about once a second; allow a few publications.
wiring_deadline_s: Final = 20.0
# One control-plane metadata GET on a broker's own client port. Loopback answers in milliseconds; a broker
# silent for 1 s counts as not answering this time, and the wait around the check asks again.
control_timeout_s: Final = 1.0
# One metadata GET while collecting the leaders' claims during the run (as leader_poll_timeout_s).
leader_claims_timeout_s: Final = 0.5
# Ports tried per proxy: another process may take a free port between our probe and the proxy's bind.
proxy_create_attempts_max: Final = 5
# How often the harness re-checks a condition it waits for (readiness, wiring, convergence).
condition_poll_interval_s: Final = 0.2
# How long each broker stays down in ChaosCluster.rolling_restart (a scenario's rolling-restart steps last
# their fault_duration instead).
rolling_restart_down_s_default: Final = 1.0
# Log lines kept with a crash record, lines quoted when a broker exits while the cluster converges, and
# problems named when convergence times out (enough to see why, short enough to read).
crash_log_tail_lines: Final = 12
exit_log_tail_lines: Final = 3
convergence_problems_shown_max: Final = 12

# --- the proxy client (chaos/proxy_client.py) -----------------------------------------------------

# One Toxiproxy API call (every call has a timeout; toxiproxy-python sets none).
proxy_request_timeout_s_default: Final = 5.0
# The server answers /version within this after it has started (ours needs ~0.5 s, Go's ~10 ms).
proxy_server_start_deadline_s_default: Final = 15.0
# SIGTERM, then SIGKILL after this; then wait this long again for the kernel to reap it.
proxy_server_stop_deadline_s_default: Final = 5.0
# Polling interval while waiting for a starting server to answer, and the timeout of each probe.
proxy_server_poll_interval_s: Final = 0.05
proxy_server_probe_timeout_s: Final = 1.0
# Attempts at starting a server on a free port (another process may take the port between our probe and
# the server's bind).
proxy_server_start_attempts_max: Final = 3
# Bytes of the server's log quoted in an error (its last lines: why it did not start).
proxy_server_log_tail_bytes: Final = 2000

# --- the schedule and the checker (chaos/nemesis.py, chaos/checker.py) ------------------------------

# Steps in one schedule: bounds the schedule (and the report) whatever the run's duration and the scenario's
# interval; a 60 s run of the densest shipped scenario (flapping-links, a step every 1.5-3 s) has a few dozen.
schedule_steps_max: Final = 2_000
# Examples kept per list in a check result; counts stay exact.
examples_max: Final = 50

# --- the report (chaos/report.py) ----------------------------------------------------------------

# Failover target for acks=all: a new leader acknowledges writes within 1 s of the fault. Reported (runs
# over it are flagged), not gated: CI machines vary.
failover_target_ms: Final = 1000.0
# summary.md shows the first rows of each run's timeline and some lost records; report.json has them all.
summary_timeline_rows_max: Final = 250
summary_lost_records_max: Final = 20
# Without a terminal (CI logs) progress is one line every few seconds; on a terminal a live table redraws.
progress_line_interval_s_default: Final = 5.0
live_table_refreshes_per_s: Final = 4

# A drain request (POST /v1/brokers/{id}/drain) is retried on other brokers while the controller is elected.
drain_request_deadline_s: Final = 10.0
# Placement snapshots the metadata poller keeps (only changes are kept; a run has a few dozen).
placement_snapshots_max: Final = 10_000

# --- the fault file system (chaos/faultfs/) ---------------------------------------------------------------

# Fault rules active at once on one mount: a scenario needs one or two; the bound keeps a buggy caller from
# making every operation scan a long list.
faultfs_rules_max: Final = 64
# Overwritten durable bytes kept for a power cut. Brokers append, so only the journal's rewrites and
# truncations land here (kilobytes); past this the mount logs that a power cut may be imprecise and says so in
# its answer, rather than growing without bound.
faultfs_undo_bytes_max: Final = 64 * MIB
# A power cut waits this long for the kernel to release the files of the process that was killed a moment
# before (RELEASE arrives asynchronously), then proceeds and reports what was still open.
faultfs_release_deadline_s: Final = 5.0
faultfs_poll_interval_s: Final = 0.02
# From starting the FUSE process to the mount being visible and its control socket answering.
faultfs_mount_deadline_s: Final = 15.0
# After SIGTERM, until the FUSE process has unmounted and exited (then SIGKILL and a lazy unmount).
faultfs_stop_deadline_s: Final = 10.0
# One control request (a power cut walks the backing directory: well under a second for a broker's files).
faultfs_control_timeout_s: Final = 30.0
# One control request or answer line (JSON): far above any real one, a bound on a confused peer.
faultfs_control_line_bytes_max: Final = 1 * MIB

# --- the hostile neighbour (chaos/hostile.py; its attack sizes are in cluster/limits.py) -----------------

# The neighbour process runs this much longer than its step unless stopped (the undo stops it on time; the
# margin only matters if the undo never comes).
hostile_overrun_s: Final = 5.0
# From SIGTERM to its report written and the process gone (its tasks wind down within a few seconds).
hostile_finish_deadline_s: Final = 15.0

# --- the consumer-group workload (chaos/group_workload.py) ----------------------------------------------
# Members: a short session so a crashed member's partitions move within a fault step; commits every 200 ms.
group_session_timeout_ms: Final = 1_500
group_auto_commit_interval_ms: Final = 200
group_request_timeout_ms: Final = 1_500
group_poll_timeout_ms: Final = 300
# At most this many members at once; a member crashes or one joins every 2-4 s (seeded).
group_members_max: Final = 3
group_churn_interval_s: Final = (2.0, 4.0)
# A clean stop of one member (commit, leave) is bounded; the watcher samples committed offsets this often.
group_member_stop_deadline_s: Final = 5.0
group_commit_sample_s: Final = 0.5
# After the drain the members get this long to process every record of the final logs (progress checked
# every group_settle_poll_s).
group_settle_deadline_s: Final = 30.0
group_settle_poll_s: Final = 0.1

# --- the workload with a Kafka client (chaos/kafka_producer.py, --client kafka) --------------------------
# librdkafka's delivery reports are served by poll() on the sender's own thread; one poll waits at most this
# long (seconds), so a stop is seen within it. It is not a pacing delay: poll returns as soon as a report is in.
kafka_poll_s: Final = 0.05
# librdkafka reconnects with a doubling backoff up to 10 s by default, which would keep a producer away from a
# restarted broker for most of a fault step; these bound it like raftmq's client's retry backoff.
kafka_reconnect_backoff_ms: Final = 50
kafka_reconnect_backoff_max_ms: Final = 1_000
kafka_retry_backoff_ms: Final = 50
kafka_retry_backoff_max_ms: Final = 500
# A connection to a black-holed or stopped broker gives up after this long (librdkafka default 30 s).
kafka_connection_setup_timeout_ms: Final = 2_000
# The sender's thread is joined within this after its final flush (which the delivery timeout bounds).
kafka_sender_join_s: Final = 5.0
