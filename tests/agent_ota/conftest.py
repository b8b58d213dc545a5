"""Fixtures for the agent OTA tests: an in-process updater wired to recording sinks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_ota_helpers import Authority, Offer, make_authority, make_bundle, make_offer

from edge_agent.config import AgentLimits, OtaTimeouts
from edge_agent.ota import OtaUpdater
from edge_agent.ota.health import HealthCheck
from shared.messages import ChunkRequest, Event, Message
from shared.topics import TopicScheme


class Clock:
    """Wall-clock time that tests can jump forward (manifests carry real expiry times)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Harness:
    """An ``OtaUpdater`` whose reports and subscriptions are recorded; ``restart`` builds a
    fresh updater over the same state directory, as a new process would."""

    state_dir: Path
    auth: Authority
    clock: Clock
    topics: TopicScheme = field(default_factory=lambda: TopicScheme("unit"))
    sent: list[Message] = field(default_factory=list)
    subscribed: set[str] = field(default_factory=set)
    health_check: HealthCheck | None = None
    limits: AgentLimits = field(default_factory=lambda: AgentLimits(fsync_chunks=False))
    updater: OtaUpdater = field(init=False)

    def __post_init__(self) -> None:
        self.updater = self._build()

    def _build(self) -> OtaUpdater:
        return OtaUpdater(
            device_id="dev-1",
            device_class="x86-cpu",
            state_dir=self.state_dir,
            trust=self.auth.trust,
            topics=self.topics,
            emit=self.sent.append,
            subscribe=self.subscribed.add,
            unsubscribe=self.subscribed.discard,
            timeouts=OtaTimeouts(chunk_retry_s=1.0, download_s=60.0),
            limits=self.limits,
            health_check=self.health_check,
            clock=self.clock,
        )

    def restart(self) -> OtaUpdater:
        self.updater.close()
        self.subscribed.clear()
        self.updater = self._build()
        self.updater.recover()
        return self.updater

    def offer(self, version: int, **kw: object) -> Offer:
        chunk_size = int(kw.pop("chunk_size", 256))  # type: ignore[call-overload]
        return make_offer(
            make_bundle(self.auth, version=version, **kw), self.topics, chunk_size=chunk_size
        )  # type: ignore[arg-type]

    def deliver(self, offer: Offer, indices: list[int] | None = None) -> None:
        self.updater.handle_deploy(offer.command)
        self.chunks(offer, indices)

    def chunks(self, offer: Offer, indices: list[int] | None = None) -> None:
        for i in range(len(offer.frames)) if indices is None else indices:
            self.updater.handle_chunk(offer.frames[i])

    def events(self, deployment_id: str | None = None) -> list[str]:
        return [
            m.kind
            for m in self.sent
            if isinstance(m, Event) and (deployment_id is None or m.deployment_id == deployment_id)
        ]

    def event(self, deployment_id: str, kind: str) -> Event:
        for m in self.sent:
            if isinstance(m, Event) and m.deployment_id == deployment_id and m.kind == kind:
                return m
        raise AssertionError(f"no {kind} event for {deployment_id}: {self.events(deployment_id)}")

    def requests(self) -> list[ChunkRequest]:
        return [m for m in self.sent if isinstance(m, ChunkRequest)]

    @property
    def active_bundle(self) -> str | None:
        slot = self.updater.slots.active()
        return slot.meta.bundle_id if slot else None


@pytest.fixture
def authority() -> Authority:
    return make_authority()


@pytest.fixture
def harness(tmp_path: Path, authority: Authority) -> Harness:
    return Harness(state_dir=tmp_path / "state", auth=authority, clock=Clock())
