"""The demo's hub in this process: :func:`cloud_hub.hub.build_hub` (registry, ingest, engine,
publisher, API) with its API served from a uvicorn thread on a loopback port."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloud_hub.config import HubConfig
from cloud_hub.errors import HubError
from cloud_hub.hub import Hub, RolloutWiring, build_hub
from cloud_hub.rollout.engine import EngineConfig
from shared.net import free_port
from simulations.harness.api_thread import ServedApp

__all__ = ["DemoHub"]


class DemoHub:
    """The hub as ``cloud-hub serve`` assembles it, with its API on a loopback port."""

    def __init__(
        self, data_dir: Path, mqtt_url: str, prefix: str, port: int, protocol: str = "5"
    ) -> None:
        self.port = port or free_port()
        config = HubConfig(
            data_dir=data_dir,
            topic_prefix=prefix,
            api_port=self.port,
            instance_id=prefix,
            offline_after_s=0,
        ).with_overrides(mqtt_url=mqtt_url)
        self.config = dataclasses.replace(
            config, mqtt=dataclasses.replace(config.mqtt, protocol=protocol)
        )
        # the engine judges a gate whose window has passed at its next tick (nothing wakes it
        # then): ticking every 0.25 s instead of 1 s ends each stage sooner
        self.wiring = RolloutWiring(engine=EngineConfig(tick_interval_s=0.25))
        self._hub: Hub | None = None
        self._api: ServedApp | None = None

    @property
    def server(self) -> Hub:
        """The running hub's parts (registry, engine, ...)."""
        if self._hub is None:
            raise HubError("DemoHub.start() first")
        return self._hub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._hub = build_hub(self.config, wiring=self.wiring).start()
        self._api = ServedApp(self._hub.app, port=self.port, name="hub-api").start(timeout=30)

    def stop(self) -> None:
        if self._api is not None:
            self._api.stop()
        if self._hub is not None:
            self._hub.stop()
