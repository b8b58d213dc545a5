"""Property-based tests of chunk frames and transfer bookkeeping."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.chunks import (
    Chunk,
    ChunkAssembly,
    chunk_count,
    decode_chunk,
    encode_chunk,
    split_chunks,
)
from shared.errors import MalformedMessageError, MixAndMatchError, ProtocolError

ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=64)


@st.composite
def chunks(draw: st.DrawFn) -> Chunk:
    count = draw(st.integers(min_value=1, max_value=10_000))
    index = draw(st.integers(min_value=0, max_value=count - 1))
    return Chunk(draw(ids), index, count, draw(st.binary(max_size=2048)))


@given(chunks())
@settings(max_examples=300, deadline=None)
def test_chunk_frame_round_trip(chunk: Chunk) -> None:
    assert decode_chunk(encode_chunk(chunk)) == chunk


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_garbage_frames_raise_only_protocol_errors(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_chunk(frame)


@given(chunks(), st.data())
@settings(max_examples=300, deadline=None)
def test_any_corruption_of_a_frame_is_detected(chunk: Chunk, data: st.DataObject) -> None:
    frame = bytearray(encode_chunk(chunk))
    pos = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        decoded = decode_chunk(bytes(frame))
    except ProtocolError:
        return
    # A flip that still decodes may only have touched the header in a way that changes what
    # it says (e.g. another index digit): the data itself can never be silently altered.
    assert decoded.data == chunk.data
    assert decoded != chunk


@given(chunks(), st.integers(min_value=0, max_value=50))
@settings(deadline=None)
def test_truncated_frames_are_refused(chunk: Chunk, cut: int) -> None:
    frame = encode_chunk(chunk)
    truncated = frame[: max(0, len(frame) - 1 - cut)]
    try:
        decoded = decode_chunk(truncated)
    except ProtocolError:
        return
    raise AssertionError(f"truncated frame decoded: {decoded}")


@given(
    st.binary(min_size=0, max_size=5000),
    st.integers(min_value=1, max_value=700),
    st.randoms(use_true_random=False),
    st.integers(min_value=0, max_value=5),
)
@settings(max_examples=200, deadline=None)
def test_split_and_reassemble_in_any_order_with_duplicates(
    data: bytes, size: int, rnd: object, dups: int
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    parts = split_chunks("b1", data, size)
    assert len(parts) == chunk_count(len(data), size)
    frames = [encode_chunk(c) for c in parts]
    frames += [rnd.choice(frames) for _ in range(dups)]
    rnd.shuffle(frames)
    asm = ChunkAssembly(bundle_id="b1", total_size=len(data), chunk_size=size)
    buf = bytearray(len(data))
    stored = 0
    for frame in frames:
        c = decode_chunk(frame)
        if asm.accept(c):
            stored += 1
            buf[asm.offset(c.index) : asm.offset(c.index) + len(c.data)] = c.data
    assert asm.complete and asm.missing() == []
    assert stored == len(parts)  # duplicates were not stored twice
    assert bytes(buf) == data


@given(st.binary(min_size=10, max_size=3000), st.integers(min_value=1, max_value=500), st.data())
@settings(max_examples=100, deadline=None)
def test_missing_lists_exactly_the_absent_chunks(data: bytes, size: int, d: st.DataObject) -> None:
    parts = split_chunks("b1", data, size)
    got = d.draw(st.sets(st.integers(min_value=0, max_value=len(parts) - 1)))
    asm = ChunkAssembly(bundle_id="b1", total_size=len(data), chunk_size=size)
    for i in got:
        asm.accept(parts[i])
    assert asm.missing() == sorted(set(range(len(parts))) - got)
    assert asm.complete == (len(got) == len(parts))


def test_foreign_and_misshapen_chunks_are_refused() -> None:
    asm = ChunkAssembly(bundle_id="b1", total_size=100, chunk_size=40)
    with pytest.raises(MixAndMatchError):
        asm.accept(Chunk("b2", 0, 3, b"x" * 40))
    with pytest.raises(ProtocolError):
        asm.accept(Chunk("b1", 0, 4, b"x" * 40))  # wrong count
    with pytest.raises(ProtocolError):
        asm.accept(Chunk("b1", 2, 3, b"x" * 40))  # last chunk must be 20 bytes
    with pytest.raises(MalformedMessageError):
        decode_chunk(encode_chunk(Chunk("b1", 0, 3, b"x" * 40))[:-1])
    assert asm.missing() == [0, 1, 2]
