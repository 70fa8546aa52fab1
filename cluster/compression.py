"""The record codecs of a Kafka RecordBatch v2: decompressing a batch's records, bounded.

A compressed batch is stored and served as its producer sent it (one compressed blob after the 61-byte
header); the broker decompresses only to validate the records before it proposes the batch, and readers
that need the records (raftmq's client, the CLI, consumer groups, exchanges) decompress them here.

Codecs (the attribute bits 0-2): gzip (one gzip member, stdlib), snappy (raw, as librdkafka writes it, or in
xerial's framing, as the Java client writes it), lz4 (LZ4 frames), zstd (zstd frames); snappy, lz4 and zstd
come from cramjam (compiled). Every codec decompresses into at most ``kafka_decompressed_batch_bytes_max``
bytes, so a small decompression bomb cannot grow memory past it.

No I/O here.
"""

from __future__ import annotations

import zlib
from typing import Final

import cramjam
from raftmq.cluster import limits
from raftmq.cluster.errors import CorruptBatch, UnsupportedCompression

CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
CODECS: Final = (CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD)
CODEC_NAMES: Final = {CODEC_NONE: "none", CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy", CODEC_LZ4: "lz4",
                      CODEC_ZSTD: "zstd"}

# Snappy as the Java client writes it (xerial's framing): a 16-byte header, then [int32 size][raw block]...
_XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES: Final = 16


class _TooLarge(Exception):
    pass


def decompress(codec: int, blob: bytes | memoryview) -> bytes:
    """The records of a batch compressed with ``codec``. Raises CorruptBatch when the blob does not
    decompress or inflates past the bound, UnsupportedCompression for a codec outside 0-4."""
    if codec == CODEC_NONE:
        return bytes(blob)
    bound = limits.kafka_decompressed_batch_bytes_max
    try:
        if codec == CODEC_GZIP:
            decompressor = zlib.decompressobj(wbits=31)  # 31: a gzip member with its header and trailer
            out = decompressor.decompress(blob, bound)
            if decompressor.unconsumed_tail:
                raise _TooLarge()
            return out
        if codec == CODEC_SNAPPY:
            return _snappy(bytes(blob), bound)
        if codec in (CODEC_LZ4, CODEC_ZSTD):
            buffer = bytearray(bound)
            size = (cramjam.lz4 if codec == CODEC_LZ4 else cramjam.zstd).decompress_into(bytes(blob), buffer)
            return bytes(buffer[:size])
    except _TooLarge:
        raise CorruptBatch("compressed record data inflates past the batch size limit", codec=codec,
                           size_bytes_max=bound) from None
    except (zlib.error, cramjam.DecompressionError, ValueError) as exc:
        # A full output buffer is cramjam's "failed to write whole buffer": reported the same way.
        raise CorruptBatch(f"record data ({CODEC_NAMES[codec]}) does not decompress: {exc}", codec=codec) from None
    raise UnsupportedCompression(f"compression codec {codec} is not served (none, gzip, snappy, lz4, zstd are)",
                                 codec=codec)


def _snappy(blob: bytes, bound: int) -> bytes:
    if not blob.startswith(_XERIAL_MAGIC):
        return _snappy_block(blob, bound)
    out = bytearray()
    position = _XERIAL_HEADER_BYTES
    while position < len(blob):
        if position + 4 > len(blob):
            raise ValueError("xerial snappy chunk header cut short")
        size = int.from_bytes(blob[position:position + 4], "big")
        position += 4
        if size > len(blob) - position:
            raise ValueError("xerial snappy chunk runs past the data")
        out += _snappy_block(blob[position:position + size], bound - len(out))
        position += size
    return bytes(out)


def _snappy_block(block: bytes, bound: int) -> bytes:
    if cramjam.snappy.decompress_raw_len(block) > bound:  # the block states its length first
        raise _TooLarge()
    return bytes(cramjam.snappy.decompress_raw(block))


def compress(codec: int, data: bytes) -> bytes:
    """``data`` compressed with ``codec`` (gzip, raw snappy, lz4 frame, zstd frame): what a producer sends."""
    if codec == CODEC_GZIP:
        compressor = zlib.compressobj(wbits=31)
        return compressor.compress(data) + compressor.flush()
    if codec == CODEC_SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == CODEC_LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == CODEC_ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise ValueError(f"codec {codec} has no compressor")


__all__ = ["CODECS", "CODEC_GZIP", "CODEC_LZ4", "CODEC_NAMES", "CODEC_NONE", "CODEC_SNAPPY", "CODEC_ZSTD",
           "compress", "decompress"]
