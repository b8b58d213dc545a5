"""The demo's hub in this process: ``HubServer`` (registry, ingest, engine) + uvicorn thread."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from simulations.harness.api_thread import ServedApp

__all__ = ["DemoHub"]


class DemoHub:
    """The hub as ``cloud-hub serve`` runs it, with its API on a loopback port."""

    def __init__(
        self, data_dir: Path, mqtt_url: str, prefix: str, port: int, protocol: str = "5"
    ) -> None:
        from cloud_hub.api.server import HubServer
        from cloud_hub.config import HubConfig
        from shared.net import free_port

        self.port = port or free_port()
        self.config = HubConfig(
            data_dir=data_dir,
            topic_prefix=prefix,
            api_port=self.port,
            instance_id=prefix,
            offline_after_s=0,
        ).with_overrides(mqtt_url=mqtt_url)
        self.config = dataclasses.replace(
            self.config, mqtt=dataclasses.replace(self.config.mqtt, protocol=protocol)
        )
        self.server = HubServer(self.config)
        self._api: ServedApp | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()
        self._api = ServedApp(self.server.app, port=self.port, name="hub-api").start(timeout=30)

    def stop(self) -> None:
        if self._api is not None:
            self._api.stop()
        self.server.stop()
