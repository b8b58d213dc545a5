"""Garbage, truncated, mutated and oversized payloads on every subscribed topic: no crash, a
logged reason, and the agent still installs the next good bundle."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from edge_agent.transport import InboundMessage
from shared.chunks import Chunk, encode_chunk
from shared.messages import (
    ChunkRequest,
    Event,
    EventKind,
    PingCommand,
    RollbackCommand,
    decode_message,
)
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    Offer,
    broker_available,
    make_authority,
    make_bundle,
    make_offer,
    start_agent,
    unique_prefix,
    wait_for,
    write_agent_config,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class FuzzTarget:
    """An agent that is not connected: handlers run in-process, reports go to its outbox."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.auth = make_authority()
        prefix = unique_prefix()
        self.topics = TopicScheme(prefix)
        cfg = write_agent_config(
            self.dir,
            device_id="fuzz-dev",
            prefix=prefix,
            trust_path=self.auth.write_trust(self.dir / "trust.json"),
            extra="[limits]\nfsync_chunks = false\nmax_chunk_bytes = 65536\n",
        )
        self.agent = EdgeAgent(load_config(cfg))
        self.version = 0
        self.mid = 0
        self._seen: list[Any] = []
        self._cursor = 0
        template = make_offer(make_bundle(self.auth, version=10**6), self.topics, chunk_size=300)
        # fixed valid commands to mutate (fixed sizes keep hypothesis' generation stable)
        self.commands = [
            template.command.to_dict(),
            RollbackCommand(
                command_id="c", deployment_id="d", order={"signed": {}}, keyring={}, ts=1.0
            ).to_dict(),
            PingCommand(command_id="p", ts=1.0).to_dict(),
        ]

    @property
    def sent_events(self) -> list[Any]:
        """Events and chunk requests the (unconnected) agent reported, read back from its
        outbox."""
        for entry in self.agent.outbox.after(self._cursor, 10**6):
            self._cursor = entry.id
            message = decode_message(entry.payload)
            if isinstance(message, Event | ChunkRequest):
                self._seen.append(message)
        return self._seen

    def deliver(self, topic: str, payload: bytes) -> None:
        self.mid += 1
        self.agent.handle(
            InboundMessage(topic=topic, payload=payload, qos=1, mid=self.mid, generation=0)
        )

    @property
    def cmd(self) -> str:
        return self.topics.device("fuzz-dev", "cmd")

    @property
    def repair(self) -> str:
        return self.topics.device("fuzz-dev", "chunks")

    def new_offer(self) -> Offer:
        self.version += 1
        return make_offer(make_bundle(self.auth, version=self.version), self.topics, chunk_size=300)

    def install(self, offer: Offer) -> bool:
        self.deliver(self.cmd, offer.command.encode())
        for frame in offer.frames:
            self.deliver(offer.command.chunk_topic, frame)
        kinds = [
            e.kind
            for e in self.sent_events
            if getattr(e, "deployment_id", None) == offer.command.deployment_id
        ]
        return EventKind.COMMITTED in kinds


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> FuzzTarget:
    return FuzzTarget(tmp_path_factory.mktemp("ota-fuzz"))


def _mutations(draw: Any, valid: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["garbage", "truncate", "field", "drop", "oversize", "version"]))
    raw = json.dumps(valid).encode()
    if kind == "garbage":
        return bytes(draw(st.binary(max_size=600)))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "oversize":
        return b'{"type":"cmd.ping","v":"1.0","command_id":"' + b"x" * (300 * 1024) + b'"}'
    data = dict(valid)
    key = draw(st.sampled_from(sorted(data)))
    if kind == "field":
        data[key] = draw(json_values)
    elif kind == "drop":
        del data[key]
    else:
        data["v"] = draw(st.sampled_from(["2.0", "x", "", "1", "1.0.0", None, 1]))
    return json.dumps(data).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_commands_never_crash(target: FuzzTarget, data: Any) -> None:
    valid = data.draw(st.sampled_from(target.commands))
    target.deliver(target.cmd, _mutations(data.draw, valid))


chunk_faults = st.one_of(
    st.tuples(st.just("garbage"), st.binary(max_size=400)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6)),
    st.tuples(
        st.just("relabel"), st.tuples(st.integers(0, 12), st.integers(1, 12), st.integers(0, 2))
    ),
    st.tuples(st.just("bad-header"), st.just(b"FFCH\x01\xff\xff{}")),
    st.tuples(st.just("oversize"), st.just(70000)),
)


def _apply(fault: tuple[str, Any], offer: Offer, which: int) -> bytes:
    kind, arg = fault
    frame = offer.frames[which % len(offer.frames)]
    if kind == "garbage" or kind == "bad-header":
        return bytes(arg)
    if kind == "truncate":
        return frame[: arg % len(frame)]
    if kind == "flip":
        pos = arg % len(frame)
        return frame[:pos] + bytes([frame[pos] ^ 0x55]) + frame[pos + 1 :]
    if kind == "relabel":
        index, count, bid = arg
        bundle_id = [offer.bundle_id, "0" * 64, "x"][bid]
        return encode_chunk(Chunk(bundle_id, min(index, count - 1), count, b"\x00" * 300))
    return frame + b"\x00" * int(arg)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(fault=chunk_faults, which=st.integers(0, 100), repair_topic=st.booleans())
def test_fuzzed_chunks_never_crash_and_download_still_completes(
    target: FuzzTarget, fault: tuple[str, Any], which: int, repair_topic: bool
) -> None:
    offer = target.new_offer()
    target.deliver(target.cmd, offer.command.encode())
    topic = target.repair if repair_topic else offer.command.chunk_topic
    target.deliver(topic, _apply(fault, offer, which))
    for f in offer.frames:  # the real chunks still complete the transfer
        target.deliver(offer.command.chunk_topic, f)
    requests = [m for m in target.sent_events if isinstance(m, ChunkRequest)]
    if requests and requests[-1].bundle_id == offer.bundle_id:  # a forged chunk was repaired
        for i in requests[-1].indices:
            target.deliver(target.repair, offer.frames[i])
    kinds = [
        e.kind
        for e in target.sent_events
        if getattr(e, "deployment_id", None) == offer.command.deployment_id
    ]
    assert kinds[-1] == EventKind.COMMITTED, kinds


def test_unexpected_topic_and_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh = FuzzTarget(tmp_path)  # its own refusal log: the first of each reason is written
    refusals = fresh.agent.updater.refusals
    with caplog.at_level(logging.WARNING):
        for _ in range(50):  # a flood: one line per reason, the rest counted
            fresh.deliver("somewhere/else", b"\x00\x01")
            fresh.deliver(fresh.cmd, b"\xff\xfe not json")
            fresh.deliver(fresh.repair, b"short")
    lines = [r.getMessage() for r in caplog.records]
    for text in ("unexpected topic", "dropped command", "dropped chunk frame"):
        assert len([line for line in lines if text in line]) == 1, lines
    assert refusals.counts == {"unexpected-topic": 50, "bad-command": 50, "bad-chunk-frame": 50}
    assert fresh.install(fresh.new_offer())


@pytest.mark.integration
@pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883")
def test_garbage_over_real_broker_then_good_bundle(tmp_path: Path) -> None:
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    hub = BundleSender(topics)
    dev = f"dev-{prefix}"
    cfg = write_agent_config(
        tmp_path, device_id=dev, prefix=prefix, trust_path=auth.write_trust(tmp_path / "t.json")
    )
    proc = start_agent(cfg, tmp_path / "agent.log")
    try:
        from shared.messages import Hello

        assert wait_for(lambda: hub.of(dev, Hello), 20)
        offer = make_offer(make_bundle(auth, version=1), topics, chunk_size=256)
        hub.send(dev, offer.command)
        garbage = [
            b"",
            b"\x00" * 10,
            b"{",
            b'{"type":"cmd.deploy","v":"9.0"}',
            b"x" * (2 * 1024 * 1024),
        ]
        for g in garbage:
            for topic in (
                topics.device(dev, "cmd"),
                topics.device(dev, "chunks"),
                offer.command.chunk_topic,
            ):
                hub.client.publish(topic, g, qos=1)
        hub.deploy(offer, [], settle_s=0.5)
        assert hub.wait_kind(dev, offer.command.deployment_id, EventKind.COMMITTED, 30)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
        hub.close()
    log = (tmp_path / "agent.log").read_text()
    assert "dropped command" in log and "dropped chunk frame" in log
