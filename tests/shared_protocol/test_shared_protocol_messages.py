"""Property-based tests of the wire message codec: round-trip, and garbage → ProtocolError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import MessageTooLargeError, ProtocolError, UnsupportedVersionError
from shared.messages import (
    ChunkRequest,
    DeployCommand,
    DriftReport,
    Event,
    FeatureDrift,
    Hello,
    InstalledModel,
    Message,
    PingCommand,
    RollbackCommand,
    Status,
    Telemetry,
    TrainCommand,
    decode_message,
)

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=24)
texts = st.text(max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_int = st.integers(min_value=-(2**53), max_value=2**53)
json_scalar = st.none() | st.booleans() | small_int | finite | texts
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_obj = st.dictionaries(texts, json_value, max_size=4)
# unknown extra fields are kept; their names must not collide with a declared field
extras = st.dictionaries(ids.map(lambda s: "x_" + s), json_value, max_size=3)

installed = st.builds(
    InstalledModel, model_name=ids, version=small_int, bundle_id=ids, extra=extras
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        device_id=ids,
        device_class=ids,
        agent_version=texts,
        runtimes=st.lists(ids, max_size=3),
        free_disk_bytes=small_int,
        free_mem_bytes=small_int,
        installed=st.none() | installed,
        labels=st.dictionaries(texts, texts, max_size=3),
        ts=finite,
        extra=extras,
    ),
    st.builds(
        Status,
        device_id=ids,
        online=st.booleans(),
        installed=st.none() | installed,
        ota_state=texts,
        deployment_id=st.none() | ids,
        runtime=st.none() | texts,
        provider=st.none() | texts,
        healthy=st.booleans(),
        ts=finite,
        extra=extras,
    ),
    st.builds(
        Telemetry,
        device_id=ids,
        seq=small_int,
        metrics=st.dictionaries(texts, finite, max_size=4),
        runtime=st.none() | texts,
        warnings=st.lists(texts, max_size=3),
        model_version=st.none() | small_int,
        ts=finite,
        extra=extras,
    ),
    st.builds(
        DriftReport,
        device_id=ids,
        report_id=ids,
        model_name=ids,
        model_version=small_int,
        window_size=small_int,
        features=st.dictionaries(texts, st.builds(FeatureDrift, psi=finite, ks=finite), max_size=3),
        drift_score=finite,
        drifted=st.booleans(),
        confidence_drift=st.booleans(),
        ts=finite,
        extra=extras,
    ),
    st.builds(
        Event,
        device_id=ids,
        event_id=ids,
        kind=texts,
        deployment_id=st.none() | ids,
        detail=texts,
        data=json_obj,
        ts=finite,
        extra=extras,
    ),
    st.builds(
        DeployCommand,
        command_id=ids,
        deployment_id=ids,
        bundle_id=ids,
        manifest=json_obj,
        keyring=json_obj,
        total_size=small_int,
        chunk_size=small_int,
        chunk_count=small_int,
        chunk_topic=texts,
        rollback_order=st.none() | json_obj,
        ts=finite,
        extra=extras,
    ),
    st.builds(
        RollbackCommand,
        command_id=ids,
        deployment_id=ids,
        order=json_obj,
        keyring=json_obj,
        ts=finite,
        extra=extras,
    ),
    st.builds(
        TrainCommand,
        command_id=ids,
        run_id=ids,
        superlink=texts,
        model_name=ids,
        config=json_obj,
        ts=finite,
        extra=extras,
    ),
    st.builds(PingCommand, command_id=ids, ts=finite, extra=extras),
    st.builds(
        ChunkRequest,
        device_id=ids,
        bundle_id=ids,
        indices=st.lists(small_int, max_size=8),
        full=st.booleans(),
        ts=finite,
        extra=extras,
    ),
)


@given(messages)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_message_round_trip(msg: Message) -> None:
    encoded = msg.encode()
    decoded = decode_message(encoded)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == encoded  # canonical: same value, same bytes


@given(messages)
@settings(max_examples=100)
def test_restricted_topic_refuses_other_types(msg: Message) -> None:
    expected = (PingCommand,) if not isinstance(msg, PingCommand) else (Event,)
    try:
        decode_message(msg.encode(), expected=expected)
    except ProtocolError:
        return
    raise AssertionError("a message of another type was accepted")


def _decode_or_protocol_error(payload: bytes) -> None:
    try:
        result = decode_message(payload)
    except ProtocolError:
        return
    assert isinstance(result, Message)


@given(st.binary(max_size=512))
@settings(max_examples=300)
def test_random_bytes_raise_only_protocol_errors(payload: bytes) -> None:
    _decode_or_protocol_error(payload)


TYPE_NAMES = [
    "hello",
    "status",
    "telemetry",
    "drift",
    "event",
    "cmd.deploy",
    "cmd.rollback",
    "cmd.train",
    "cmd.ping",
    "chunk.request",
]
FIELD_NAMES = [
    "device_id",
    "device_class",
    "runtimes",
    "installed",
    "online",
    "metrics",
    "features",
    "indices",
    "manifest",
    "keyring",
    "order",
    "total_size",
    "seq",
    "ts",
    "extra",
    "kind",
    "command_id",
    "bundle_id",
    "labels",
    "psi",
    "self",
    "cls",
]


@given(
    st.sampled_from(TYPE_NAMES),
    st.sampled_from(["1.0", "1.7", "2.0", "0.9", "1", "x.y", "", "1.0.0"]) | texts,
    st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, json_value, max_size=8),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_typed_garbage_raises_only_protocol_errors(
    type_name: str, version: str, fields: dict[str, Any]
) -> None:
    payload = json.dumps({**fields, "type": type_name, "v": version}).encode()
    _decode_or_protocol_error(payload)


@given(messages, st.data())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_truncated_or_mutated_valid_messages(msg: Message, data: st.DataObject) -> None:
    encoded = msg.encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    _decode_or_protocol_error(encoded[:cut])
    pos = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(encoded)
    mutated[pos] ^= mask
    _decode_or_protocol_error(bytes(mutated))


def test_unknown_major_version_and_oversized_payloads_are_refused() -> None:
    body = PingCommand(command_id="c1").to_dict()
    body["v"] = "2.0"
    try:
        decode_message(json.dumps(body).encode())
    except UnsupportedVersionError:
        pass
    else:
        raise AssertionError("major version 2 accepted")
    big = PingCommand(command_id="c" * 2000).encode()
    try:
        decode_message(big, max_bytes=1000)
    except MessageTooLargeError:
        pass
    else:
        raise AssertionError("oversized payload accepted")


def test_unknown_minor_fields_are_kept() -> None:
    body = PingCommand(command_id="c1").to_dict()
    body["v"] = "1.9"
    body["future_field"] = {"a": 1}
    msg = decode_message(json.dumps(body).encode())
    assert isinstance(msg, PingCommand)
    assert msg.extra == {"future_field": {"a": 1}}
