"""The README's error-code table says what cluster/errors.py does: every code a broker can send is listed once,
with its HTTP status and its retriable and definite flags, and nothing else is listed.

Method: parse the markdown table; compare with the error registry (client-only codes are named in the
sentence under the table instead)."""

from __future__ import annotations

import re
from pathlib import Path

from raftmq.cluster.errors import all_error_classes

README = Path(__file__).resolve().parents[2] / "README.md"
CLIENT_ONLY = {"CONNECTION_FAILED", "CLIENT_TIMEOUT", "PRODUCER_CLOSED", "BUFFER_EXHAUSTED", "UNEXPECTED_RESPONSE",
               "INVARIANT_VIOLATION", "DEAD_LETTER_FAILED"}
_ROW = re.compile(r"\| `([A-Z_]+)` \| (\d{3}) \| (yes|no) \| (\*\*no\*\*|yes|no) \|")


def test_readme_error_table_matches_the_registry() -> None:
    rows = {}
    for match in _ROW.finditer(README.read_text()):
        code, status, retriable, definite = match.groups()
        assert code not in rows, f"{code} listed twice"
        rows[code] = (int(status), retriable == "yes", definite == "yes")
    expected = {cls.code: (cls.http_status, cls.retriable, cls.definite)
                for cls in all_error_classes() if cls.code not in CLIENT_ONLY}
    assert rows == expected
