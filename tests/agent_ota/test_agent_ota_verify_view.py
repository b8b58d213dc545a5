"""A download is verified where it lies: ``verify_download`` over a view of the download file
makes exactly the checks of ``shared.bundle.verify_bundle`` (same verdict, same error class,
same artifacts) without copying the bundle, and the artifacts it returns stay readable until
the install has written them, even after the download is removed."""

from __future__ import annotations

import mmap
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ota.download import BundleDownload
from edge_agent.ota.offer import verify_download
from shared.bundle import VerifyPolicy, bundle_id_of, parse_bundle, verify_bundle
from shared.chunks import split_chunks
from tests.agent_ota.agent_ota_helpers import make_authority, make_bundle, onnx_model_bytes

AUTH = make_authority()
BUNDLE = make_bundle(
    AUTH,
    version=3,
    model=onnx_model_bytes(8, 4, seed=3),
    extra_artifacts={"payload.bin": (os.urandom(50_000), "other")},
)
BUNDLE_ID = bundle_id_of(parse_bundle(BUNDLE).manifest_envelope)
COMMAND = {"rollback_order": None}


def _policy() -> VerifyPolicy:
    return VerifyPolicy(trust=AUTH.trust, device_class="x86-cpu", now=datetime.now(tz=timezone.utc))


def _verdict_shared(data: bytes, bundle_id: str) -> object:
    try:
        verified = verify_bundle(data, _policy(), expected_bundle_id=bundle_id)
    except Exception as exc:  # the verdict compared is the error class
        return type(exc)
    return {name: bytes(a) for name, a in verified.artifacts.items()}


def _verdict_view(data: bytes, bundle_id: str) -> object:
    try:
        verified = verify_download(memoryview(data), COMMAND, _policy(), bundle_id)
    except Exception as exc:
        return type(exc)
    return {name: bytes(a) for name, a in verified.artifacts.items()}


def test_an_intact_bundle_verifies_with_the_same_artifacts() -> None:
    verdict = _verdict_view(BUNDLE, BUNDLE_ID)
    assert isinstance(verdict, dict) and set(verdict) == {"model.onnx", "payload.bin"}
    assert verdict == _verdict_shared(BUNDLE, BUNDLE_ID)


@settings(max_examples=150, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(BUNDLE) - 1),
    flip=st.integers(min_value=1, max_value=255),
    cut=st.sampled_from([0, 0, 1, 7, 5000]),
    extra=st.sampled_from([b"", b"", b"\x00", b"junk"]),
)
def test_any_damage_gets_the_verdict_of_shared_verify_bundle(
    position: int, flip: int, cut: int, extra: bytes
) -> None:
    damaged = bytearray(BUNDLE)
    damaged[position] ^= flip
    data = bytes(damaged[: len(damaged) - cut]) + extra
    view_verdict = _verdict_view(data, BUNDLE_ID)
    assert view_verdict == _verdict_shared(data, BUNDLE_ID)
    assert not isinstance(view_verdict, dict)  # every flipped byte is caught


def test_a_bundle_other_than_the_offered_one_is_refused_like_shared_does() -> None:
    other = "0" * 64
    assert _verdict_view(BUNDLE, other) == _verdict_shared(BUNDLE, other)
    assert not isinstance(_verdict_view(BUNDLE, other), dict)


def test_artifacts_are_views_of_the_download_file_and_outlive_its_removal(
    tmp_path: Path,
) -> None:
    chunk_size = 4096
    dl = BundleDownload(
        tmp_path / BUNDLE_ID,
        bundle_id=BUNDLE_ID,
        total_size=len(BUNDLE),
        chunk_size=chunk_size,
    )
    for chunk in split_chunks(BUNDLE_ID, BUNDLE, chunk_size):
        assert dl.store(chunk)
    verified = verify_download(dl.view(), COMMAND, _policy(), BUNDLE_ID)
    payload = verified.artifacts["payload.bin"]
    assert isinstance(payload.obj, mmap.mmap)  # not a copy in fresh memory
    dl.remove()  # the install frees the download once the slot holds the artifacts
    assert not (tmp_path / BUNDLE_ID).exists()
    assert bytes(payload) == _verdict_shared(BUNDLE, BUNDLE_ID)["payload.bin"]  # type: ignore[index]


def test_a_download_file_of_the_wrong_size_is_not_mapped(tmp_path: Path) -> None:
    dl = BundleDownload(
        tmp_path / BUNDLE_ID, bundle_id=BUNDLE_ID, total_size=len(BUNDLE), chunk_size=4096
    )
    os.truncate(tmp_path / BUNDLE_ID / "bundle.part", len(BUNDLE) - 1)
    with pytest.raises(Exception, match=r"not \d+ bytes"):
        dl.view()
    dl.close()
