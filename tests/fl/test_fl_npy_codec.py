"""Flower's array (de)serialization with cached headers: Flower's bytes and arrays exactly."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.compat.common import parameter as flower
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fl import npy_codec

DTYPES = ["<i8", "<i4", "<f4", "<f8", ">i8", "|b1", "|u1", "<c16"]


def _arrays() -> st.SearchStrategy[np.ndarray]:
    shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
    return st.builds(
        lambda dtype, shape, seed, order: np.asarray(
            np.random.default_rng(seed).integers(-100, 100, shape), dtype=dtype, order=order
        ),
        st.sampled_from(DTYPES),
        shapes,
        st.integers(0, 2**16),
        st.sampled_from(["C", "F"]),
    )


@settings(max_examples=80, deadline=None)
@given(array=_arrays(), twice=st.booleans())
def test_same_bytes_and_arrays_as_flower(array: np.ndarray, twice: bool) -> None:
    for _ in range(2 if twice else 1):  # the second time from the cached header
        data = npy_codec.ndarray_to_bytes(array)
        assert data == flower.ndarray_to_bytes(array)
        ours, theirs = npy_codec.bytes_to_ndarray(data), flower.bytes_to_ndarray(data)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        assert ours.flags.writeable and ours.flags.f_contiguous == theirs.flags.f_contiguous


def test_views_and_zero_d_arrays() -> None:
    base = np.arange(60, dtype=np.int64).reshape(6, 10)
    for array in (base[::2, 1:7], base.T, np.array(7), base[0, :0]):
        for _ in range(2):
            assert npy_codec.ndarray_to_bytes(array) == flower.ndarray_to_bytes(array)
            np.testing.assert_array_equal(
                npy_codec.bytes_to_ndarray(npy_codec.ndarray_to_bytes(array)), array
            )


def test_the_array_does_not_share_the_message_bytes() -> None:
    data = flower.ndarray_to_bytes(np.arange(4, dtype=np.int64))
    array = npy_codec.bytes_to_ndarray(data)
    array[0] = 99
    assert flower.bytes_to_ndarray(data)[0] == 0


@pytest.mark.parametrize(
    "bad",
    [b"", b"not an array", flower.ndarray_to_bytes(np.arange(8))[:-3], b"\x93NUMPY\x01\x00\xff"],
)
def test_what_flower_refuses_is_refused_the_same_way(bad: bytes) -> None:
    with pytest.raises(Exception) as theirs:
        flower.bytes_to_ndarray(bad)
    with pytest.raises(type(theirs.value)):
        npy_codec.bytes_to_ndarray(bad)


def test_object_arrays_are_left_to_flower() -> None:
    with pytest.raises(ValueError):
        npy_codec.ndarray_to_bytes(np.array([object()], dtype=object))
