"""Retries and dead letters, the pure part: the retry backoff schedule, the dead-letter topic's name, and the
headers a parked record carries (and how a replay reads them back).

A record whose handler failed ``attempts`` times is copied to ``<topic>.DLT`` (same key, value, headers and
partition number) with these headers added, so that an operator can see why and ``raftmq dlt replay`` can
send it back where it came from:

* ``dlt.error``: the last error, ``ClassName: message`` (at most ``limits.dlt_error_chars_max`` characters);
* ``dlt.attempts``: how many times the handler ran;
* ``dlt.topic``, ``dlt.partition``, ``dlt.offset``, ``dlt.timestamp_ms``: where the original record was, and
  its timestamp;
* ``dlt.failed_ms``: when it was parked.

Header values are UTF-8 text (numbers in decimal). No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from raftmq.cluster import limits

DLT_SUFFIX = ".DLT"
HEADER_PREFIX = "dlt."
REPLAYED_HEADER = "dlt.replayed_from"  # on a replayed record: "<dlt topic>/<partition>/<offset>"


def dead_letter_topic(topic: str) -> str:
    return topic + DLT_SUFFIX


def retry_backoff_ms(attempt: int, *, base_ms: int, max_ms: int) -> int:
    """The pause after failed attempt number ``attempt`` (1 = the first): ``base * 2**(attempt-1)``, capped
    at ``max_ms``. No jitter: one consumer retries one record, there is no herd to spread."""
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    return int(min(max_ms, base_ms * 2 ** min(attempt - 1, 40)))


@dataclass(frozen=True)
class DeadLetter:
    """Where a parked record came from and why it was parked."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    attempts: int
    error: str
    failed_ms: int

    def headers(self) -> list[tuple[str, bytes]]:
        fields = (("error", self.error[:limits.dlt_error_chars_max]), ("attempts", str(self.attempts)),
                  ("topic", self.topic), ("partition", str(self.partition)), ("offset", str(self.offset)),
                  ("timestamp_ms", str(self.timestamp_ms)), ("failed_ms", str(self.failed_ms)))
        return [(HEADER_PREFIX + name, value.encode()) for name, value in fields]


def parse_dead_letter(headers: Iterable[tuple[str, bytes | None]]) -> DeadLetter | None:
    """The dead-letter headers of a record, or None when it has none (or they are damaged)."""
    found = {name[len(HEADER_PREFIX):]: (value or b"").decode("utf-8", "replace") for name, value in headers
             if name.startswith(HEADER_PREFIX)}
    try:
        return DeadLetter(found["topic"], int(found["partition"]), int(found["offset"]), int(found["timestamp_ms"]),
                          int(found["attempts"]), found.get("error", ""), int(found["failed_ms"]))
    except (KeyError, ValueError):
        return None


def original_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """The record's own headers: what it carried before it was parked (a replay sends these)."""
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


__all__ = ["DLT_SUFFIX", "HEADER_PREFIX", "REPLAYED_HEADER", "DeadLetter", "dead_letter_topic", "original_headers",
           "parse_dead_letter", "retry_backoff_ms"]
