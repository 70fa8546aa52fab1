"""Every limit and timeout of the fault proxy server, named, units last, with the reason beside it.

The server must never grow without bound, whatever its clients or peers do: every queue, every wait and every
count has a cap here. Relations between limits are asserted at import time so a bad edit fails at once.

No I/O here.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# --- data path ------------------------------------------------------------------------------------

# One read from a socket. Go Toxiproxy reads 32 KiB at a time; a chunk is the unit every toxic sees.
chunk_bytes_max: Final = 32 * KIB
# Chunks read ahead of the toxic chain on one link (one direction of one connection). Toxiproxy buffers
# 1024 chunks between toxics; read-ahead is what lets `latency` deliver each chunk at read time + latency
# instead of adding the latency once per chunk.
link_queue_chunks_max: Final = 1024
# Bytes read ahead on one link. Reading pauses at this size (TCP backpressure reaches the sender) and
# resumes once the queue is down to half.
link_queue_bytes_max: Final = 4 * MIB
link_queue_bytes_resume: Final = link_queue_bytes_max // 2
link_queue_chunks_resume: Final = link_queue_chunks_max // 2
# Bytes a transport may hold for a slow receiver before the writer waits in drain().
write_buffer_bytes_high: Final = 64 * KIB
write_buffer_bytes_low: Final = 16 * KIB

# --- counts ---------------------------------------------------------------------------------------

# Open connections per proxy. Beyond it a new client is closed at once (and the refusal is logged).
proxy_connections_max: Final = 1024
# Proxies per server and toxics per proxy: far above what a test needs, low enough to bound the work a
# single toxic update does (it visits every link of every connection of the proxy).
proxies_max: Final = 1024
toxics_per_proxy_max: Final = 64

# --- times ----------------------------------------------------------------------------------------

# Dialing the upstream. Go Toxiproxy has no dial timeout (the kernel's SYN retries take ~2 min); a
# bounded dial keeps a black-holed upstream from pinning a connection slot for that long.
upstream_connect_timeout_s: Final = 10.0
# A plain close (FIN) flushes what the transport still buffers; a receiver that never reads would hold
# the close forever, so after this deadline the connection is aborted instead.
close_flush_deadline_s: Final = 1.0
# Stopping a proxy waits for its connections to finish closing, at most this long.
proxy_stop_deadline_s: Final = close_flush_deadline_s + 2.0
# Every API handler runs under this deadline (Go Toxiproxy: http.TimeoutHandler, 25 s). A handler that
# overruns gets 503; its work is not cancelled half-way (that could leave a proxy half-stopped).
handler_timeout_s: Final = 25.0
# Keep-alive idle timeout of API connections (Go Toxiproxy: IdleTimeout 60 s).
http_idle_timeout_s: Final = 60.0
# Shutting the whole server down on SIGTERM/SIGINT.
server_shutdown_deadline_s: Final = 10.0
api_shutdown_deadline_s: Final = 3.0

# --- API input ------------------------------------------------------------------------------------

# Request bodies are a few hundred bytes; /populate with proxies_max entries stays far below this.
request_body_bytes_max: Final = 1 * MIB
# Integer toxic attributes are Go int64 fields; larger numbers are rejected like Go's decoder does.
attribute_value_max: Final = 2**63 - 1
attribute_value_min: Final = -(2**63)
# toxicity is a Go float32.
float32_abs_max: Final = 3.4028234663852886e38

# --- relations ------------------------------------------------------------------------------------

assert link_queue_bytes_max >= 2 * chunk_bytes_max, "a link must hold at least two chunks"
assert 0 < link_queue_bytes_resume < link_queue_bytes_max
assert 0 < link_queue_chunks_resume < link_queue_chunks_max
assert 0 < write_buffer_bytes_low < write_buffer_bytes_high
assert proxy_stop_deadline_s > close_flush_deadline_s, "stop must outlast the flush of a plain close"
assert handler_timeout_s > proxy_stop_deadline_s, "stopping one proxy must fit in one API call"
assert server_shutdown_deadline_s > proxy_stop_deadline_s + api_shutdown_deadline_s
