"""Binary framing of bundle chunks and the pure bookkeeping of a chunked transfer.

Frame::

    b"FFCH" | u8 version (1) | u16 header length | header (canonical JSON) | data

header = ``{"bundle_id", "index", "count", "sha256"}`` where ``sha256`` is the chunk's data
hash — it lets a receiver drop a corrupted chunk and ask for it again. It is not a trust
anchor: the assembled artifacts are verified against the signed manifest.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from shared.canonical import canonical_bytes, parse_json_object
from shared.errors import (
    ConfigError,
    MalformedMessageError,
    MessageTooLargeError,
    MixAndMatchError,
    ProtocolError,
)

CHUNK_MAGIC = b"FFCH"
CHUNK_VERSION = 1
DEFAULT_CHUNK_SIZE = 128 * 1024 - 512  # fits brokers limited to 128 KiB per message
MAX_CHUNK_SIZE = 16 * 1024 * 1024
_PREFIX = struct.Struct(">4sBH")

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "Chunk",
    "ChunkAssembly",
    "chunk_count",
    "decode_chunk",
    "encode_chunk",
    "split_chunks",
]


@dataclass(frozen=True)
class Chunk:
    bundle_id: str
    index: int
    count: int
    data: bytes


def encode_chunk(chunk: Chunk) -> bytes:
    header = canonical_bytes(
        {
            "bundle_id": chunk.bundle_id,
            "index": chunk.index,
            "count": chunk.count,
            "sha256": hashlib.sha256(chunk.data).hexdigest(),
        }
    )
    return _PREFIX.pack(CHUNK_MAGIC, CHUNK_VERSION, len(header)) + header + chunk.data


def decode_chunk(frame: bytes, *, max_chunk_size: int = MAX_CHUNK_SIZE) -> Chunk:
    """Decode an untrusted frame; raises a ``ProtocolError`` subclass on any defect."""
    if len(frame) < _PREFIX.size:
        raise MalformedMessageError("chunk frame truncated")
    magic, version, hlen = _PREFIX.unpack_from(frame, 0)
    if magic != CHUNK_MAGIC:
        raise MalformedMessageError("not a chunk frame (bad magic)")
    if version != CHUNK_VERSION:
        raise MalformedMessageError(f"unsupported chunk frame version {version}")
    end = _PREFIX.size + hlen
    if len(frame) < end:
        raise MalformedMessageError("chunk header truncated")
    header = parse_json_object(frame[_PREFIX.size : end], max_bytes=4096)
    data = bytes(frame[end:])
    if len(data) > max_chunk_size:
        raise MessageTooLargeError(f"chunk of {len(data)} bytes over limit {max_chunk_size}")
    bundle_id, index, count, digest = (
        header.get(k) for k in ("bundle_id", "index", "count", "sha256")
    )
    if not isinstance(bundle_id, str) or not isinstance(digest, str):
        raise MalformedMessageError("chunk header needs bundle_id and sha256 strings")
    if (
        not (isinstance(index, int) and isinstance(count, int))
        or isinstance(index, bool)
        or isinstance(count, bool)
    ):
        raise MalformedMessageError("chunk index/count must be integers")
    if count < 1 or not 0 <= index < count:
        raise MalformedMessageError(f"chunk index {index} out of range for count {count}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise MalformedMessageError(f"chunk {index} corrupted (sha256 mismatch)")
    return Chunk(bundle_id=bundle_id, index=index, count=count, data=data)


def chunk_count(total_size: int, chunk_size: int) -> int:
    return max(1, -(-total_size // chunk_size))


def split_chunks(bundle_id: str, data: bytes, chunk_size: int) -> list[Chunk]:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"chunk size must be 1..{MAX_CHUNK_SIZE}")
    count = chunk_count(len(data), chunk_size)
    return [
        Chunk(bundle_id, i, count, data[i * chunk_size : (i + 1) * chunk_size])
        for i in range(count)
    ]


class ChunkAssembly:
    """Which chunks of one bundle have arrived; pure bookkeeping (storage is the caller's).

    Duplicates are ignored (idempotent); a chunk from another bundle, with a different count,
    or of the wrong length raises.
    """

    def __init__(
        self, *, bundle_id: str, total_size: int, chunk_size: int, received: set[int] | None = None
    ) -> None:
        if total_size < 0 or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError("bad transfer geometry")
        self.bundle_id = bundle_id
        self.total_size = total_size
        self.chunk_size = chunk_size
        self.count = chunk_count(total_size, chunk_size)
        self.received: set[int] = set(received or ())

    def expected_length(self, index: int) -> int:
        if index < self.count - 1:
            return self.chunk_size
        return self.total_size - self.chunk_size * (self.count - 1)

    def accept(self, chunk: Chunk) -> bool:
        """Check ``chunk``; return True if it is new and should be stored."""
        if chunk.bundle_id != self.bundle_id:
            raise MixAndMatchError("chunk belongs to another bundle")
        if chunk.count != self.count:
            raise ProtocolError(f"chunk count {chunk.count} does not match offer ({self.count})")
        if len(chunk.data) != self.expected_length(chunk.index):
            raise ProtocolError(f"chunk {chunk.index} has wrong length {len(chunk.data)}")
        if chunk.index in self.received:
            return False
        self.received.add(chunk.index)
        return True

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.received]

    @property
    def complete(self) -> bool:
        return len(self.received) == self.count

    def offset(self, index: int) -> int:
        return index * self.chunk_size
