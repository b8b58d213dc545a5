"""Binary framing of bundle chunks and the pure bookkeeping of a chunked transfer.

Frame::

    b"FFCH" | u8 version (1) | u16 header length | header (canonical JSON) | data

header = ``{"bundle_id", "index", "count", "sha256"}`` where ``sha256`` is the chunk's data
hash — it lets a receiver find a corrupted chunk and ask for it again. It is not a trust
anchor: the assembled artifacts are verified against the signed manifest.

:func:`decode_chunk` checks the hash and copies the data out; :func:`parse_chunk_frame` checks
everything but the hash and returns the data as a view into the frame, for a receiver that
writes it straight to disk and keeps the claimed hash to check the bytes when it needs them
(see :meth:`ChunkFrame.digest_matches`).
"""

from __future__ import annotations

import hashlib
import re
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
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "Chunk",
    "ChunkAssembly",
    "ChunkFrame",
    "chunk_count",
    "decode_chunk",
    "encode_chunk",
    "parse_chunk_frame",
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


@dataclass(frozen=True)
class ChunkFrame:
    """A well-formed chunk frame whose data hash is only claimed (not yet checked).

    ``data`` is a view into the frame (no copy); ``sha256`` the header's 32-byte digest.
    """

    bundle_id: str
    index: int
    count: int
    data: memoryview
    sha256: bytes

    def digest_matches(self) -> bool:
        return hashlib.sha256(self.data).digest() == self.sha256

    def to_chunk(self) -> Chunk:
        return Chunk(
            bundle_id=self.bundle_id, index=self.index, count=self.count, data=bytes(self.data)
        )


def parse_chunk_frame(
    frame: bytes | bytearray | memoryview, *, max_chunk_size: int = MAX_CHUNK_SIZE
) -> ChunkFrame:
    """Parse an untrusted frame without hashing its data; raises a ``ProtocolError`` subclass
    on any defect of its layout or header."""
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
    view = memoryview(frame)
    header = parse_json_object(view[_PREFIX.size : end], max_bytes=4096)
    data = view[end:]
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
    if not _HEX_DIGEST.fullmatch(digest):
        raise MalformedMessageError(f"chunk {index} corrupted (sha256 is not a hex digest)")
    return ChunkFrame(bundle_id, index, count, data, bytes.fromhex(digest))


def decode_chunk(frame: bytes, *, max_chunk_size: int = MAX_CHUNK_SIZE) -> Chunk:
    """Decode an untrusted frame and check its data hash; raises a ``ProtocolError``
    subclass on any defect."""
    parsed = parse_chunk_frame(frame, max_chunk_size=max_chunk_size)
    if not parsed.digest_matches():
        raise MalformedMessageError(f"chunk {parsed.index} corrupted (sha256 mismatch)")
    return parsed.to_chunk()


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

    def accept(self, chunk: Chunk | ChunkFrame) -> bool:
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
