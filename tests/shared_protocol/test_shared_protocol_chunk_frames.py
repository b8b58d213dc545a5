"""Chunk frames parsed without hashing: the data is a view into the frame, the hash a claim."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.chunks import Chunk, decode_chunk, encode_chunk, parse_chunk_frame
from shared.errors import MalformedMessageError


@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=50), st.data())
@settings(max_examples=200, deadline=None)
def test_parsed_frame_views_the_data_and_checks_its_claim(
    data: bytes, count: int, d: st.DataObject
) -> None:
    index = d.draw(st.integers(min_value=0, max_value=count - 1))
    frame = encode_chunk(Chunk("b1", index, count, data))
    parsed = parse_chunk_frame(frame)
    assert (parsed.bundle_id, parsed.index, parsed.count) == ("b1", index, count)
    assert parsed.data.obj is frame and bytes(parsed.data) == data  # no copy
    assert parsed.digest_matches() and parsed.to_chunk() == decode_chunk(frame)
    if data:
        flipped = bytearray(frame)
        flipped[-1 - d.draw(st.integers(min_value=0, max_value=len(data) - 1))] ^= 0x01
        damaged = parse_chunk_frame(bytes(flipped))  # the layout is intact
        assert not damaged.digest_matches()
        with pytest.raises(MalformedMessageError, match="sha256 mismatch"):
            decode_chunk(bytes(flipped))


def test_a_claimed_hash_that_is_no_hex_digest_is_refused() -> None:
    frame = encode_chunk(Chunk("b1", 0, 1, b"abc"))
    digest = frame[frame.index(b'"sha256":"') + 10 :][:64]
    for bad in (digest.upper(), b"z" * 64):
        with pytest.raises(MalformedMessageError, match="not a hex digest"):
            parse_chunk_frame(frame.replace(digest, bad))
