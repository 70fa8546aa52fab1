"""A Toxiproxy-compatible fault proxy server for raftmq's chaos suite.

No Toxiproxy release can be installed on the project's machines, so raftmq ships this server: it speaks the
Toxiproxy 2.12.0 HTTP API (so toxiproxy-python and the harness drive it unchanged) and takes the same flags as
`toxiproxy-server`. The harness uses a real `toxiproxy-server` instead whenever one is available
(`chaos.proxy_client.ToxiproxyServerProcess`), and one conformance suite runs against either.

Layout:
- `limits.py`: every bound and timeout, named;
- `codec.py`, `errors.py`: JSON in and out as Go's encoding/json does it, Toxiproxy's error messages;
- `toxics.py`: the toxic types and the toxic definitions of the API;
- `link.py`: the data path (endpoints, links, stages); `proxy.py`: listeners and connections;
- `collection.py`: the proxy set with Toxiproxy's create/update/populate/reset semantics;
- `server.py`: the aiohttp application; `__main__.py`: the command line.

Run it with `python -m raftmq.chaos.toxiproxy -host 127.0.0.1 -port 8474 [-config FILE] [-seed N]`.
"""

from __future__ import annotations

from typing import Final

# The Toxiproxy release whose API this server implements (reported by GET /version).
VERSION: Final = "2.12.0"

__all__ = ["VERSION"]
