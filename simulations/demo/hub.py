"""The demo's hub in this process: ``HubServer`` (registry, ingest, engine) + uvicorn thread."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from simulations.harness.polling import eventually

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
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import uvicorn

        self.server.start()
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.server.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
            )
        )
        self._thread = threading.Thread(target=self._uvicorn.run, name="hub-api", daemon=True)
        self._thread.start()
        eventually(lambda: self._uvicorn.started, 30, "hub API up")

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.stop()
