"""A whole hub process: registry + MQTT ingest + rollout engine + API (+ dashboard).

``cloud-hub serve`` is a thin wrapper around :class:`HubServer`; tests and benchmarks run
one in-process the same way::

    server = HubServer(HubConfig(db_url=..., mqtt=BrokerEndpoint(port=1883)))
    server.start()          # registry, ingest, engine loop
    server.serve_forever()  # uvicorn until SIGINT/SIGTERM (or run server.app yourself)
    server.stop()

Optional parts are attached when their modules and state exist, and say so in the log when
they do not: the rollout engine needs a key store (``cloud-hub keys init``) and
``cloud_hub.rollout.PublisherDelivery``; enrollment needs ``cloud_hub.enrollment``; the
dashboard is mounted when ``cloud_hub.dashboard`` exposes ``mount(app, context)``.
"""

from __future__ import annotations

import importlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cloud_hub.api.app import create_app
from cloud_hub.api.auth import flush_audit
from cloud_hub.api.context import ApiContext
from cloud_hub.broker_client import HubRole, hub_client_id_for
from cloud_hub.bundles import BundleStore, default_store
from cloud_hub.config import HubConfig
from cloud_hub.delivery.config import PublisherTuning
from cloud_hub.errors import HubError
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, open_registry
from cloud_hub.registry.bundle_index import index_store_bundles
from cloud_hub.registry.records import DeviceRecord
from cloud_hub.rollout.commands import RolloutCommands
from cloud_hub.rollout.delivery import PublisherDelivery, RolloutDelivery
from cloud_hub.rollout.engine import EngineConfig
from shared.errors import FedfleetError
from shared.topics import TopicScheme

__all__ = ["HubServer", "RolloutWiring"]

log = logging.getLogger(__name__)


def _running_bundle(s: Session, device: DeviceRecord | None) -> str | None:
    """The indexed bundle ``device`` runs: the one it reports or, when that is a delta built
    for it, the full bundle of the same model, class and version."""
    if device is None or device.installed_bundle_id is None:
        return None
    if catalog.find_bundle(s, device.installed_bundle_id) is not None:
        return device.installed_bundle_id
    if device.installed_model and device.device_class and device.installed_version is not None:
        full = catalog.find_full_bundle(
            s,
            model_name=device.installed_model,
            device_class=device.device_class,
            version=device.installed_version,
        )
        if full is not None:
            return full.bundle_id
    return device.installed_bundle_id


SHUTDOWN_GRACE_S = 5  # then uvicorn cancels what still holds a connection open


@dataclass(frozen=True)
class RolloutWiring:
    """How :class:`HubServer` assembles its rollout engine; the defaults are ``cloud-hub
    serve``'s. The fleet simulation reuses the same assembly with its own tuning and a
    delivery that also counts what it sent (``wrap_delivery``)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    publisher: PublisherTuning = field(default_factory=PublisherTuning)
    deltas: bool = True  # offer each device a delta against what it runs when smaller
    wrap_delivery: Callable[[PublisherDelivery], RolloutDelivery] | None = None


class HubServer:
    """Owns every long-lived part of one hub process (its one composition root)."""

    def __init__(
        self,
        config: HubConfig,
        *,
        rollout_engine: bool = True,
        wiring: RolloutWiring | None = None,
    ) -> None:
        self.config = config
        self.want_engine = rollout_engine
        self.wiring = wiring or RolloutWiring()
        self.registry: Registry | None = None
        self.ingest: FleetIngest | None = None
        self.engine: Any = None
        self.publisher: Any = None
        self.context: ApiContext | None = None
        self.bundles: BundleStore | None = None
        self._app: FastAPI | None = None
        self._stop = threading.Event()
        self._engine_thread: threading.Thread | None = None
        self._housekeeping: threading.Thread | None = None
        self.trust_publisher: Any = None  # cloud_hub.trust_publisher.TrustPublisher (R10)
        self._trust_thread: threading.Thread | None = None

    @property
    def app(self) -> FastAPI:
        if self._app is None:
            raise HubError("HubServer.start() first")
        return self._app

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = open_registry(cfg.database_url)
        self.bundles = self._open_bundle_store()
        if self.want_engine:  # before the ingest, which hands its publisher the device reports
            self.engine = self._build_engine()
        if cfg.enable_ingest:
            self.ingest = FleetIngest(
                self.registry,
                scheme=TopicScheme(cfg.topic_prefix),
                mqtt_settings=IngestConnection(
                    endpoint=cfg.mqtt, client_id=hub_client_id_for(cfg, HubRole.INGEST)
                ),
                config=cfg.ingest,
            )
            fleet = getattr(self.publisher, "publisher", None)
            if fleet is not None:  # each device report reaches the hub once: through the ingest
                self.ingest.add_observer(lambda inbound: fleet.observe(inbound.message))
            self.ingest.start()
            log.info(
                "ingest %s subscribed on %s under %s/",
                self.ingest.settings.client_id,
                cfg.mqtt.url,
                cfg.topic_prefix,
            )
        # without the engine the commands still work: they are registry writes, and the
        # engine of another hub process picks them up (``serve --no-engine`` replicas)
        commands = self.engine or RolloutCommands(self.registry)
        self.context = ApiContext(
            registry=self.registry,
            rollouts=commands,
            enrollment=self._build_enrollment(),
            ingest_stats=self.ingest.stats if self.ingest is not None else None,
            bundles=self.bundles,
        )
        self._app = create_app(self.context)
        self._mount_optional(self._app, self.context)
        if self.engine is not None:
            if self.ingest is not None:
                engine = self.engine
                self.ingest.add_listener(lambda c: engine.wake() if c.events_new else None)
            self._engine_thread = threading.Thread(
                target=self.engine.run, args=(self._stop,), name="rollout-engine", daemon=True
            )
            self._engine_thread.start()
            log.info("rollout engine running")
        self._start_trust_publisher()
        if cfg.offline_after_s:
            self._housekeeping = threading.Thread(
                target=self._mark_silent_offline, name="hub-housekeeping", daemon=True
            )
            self._housekeeping.start()

    def serve_forever(self) -> None:
        """Run the API with uvicorn until SIGINT/SIGTERM, then return (call :meth:`stop`).

        uvicorn re-raises the signal it caught once it has shut down; our handler turns that
        into a normal return so the ingest can still write what it holds."""
        import uvicorn

        class _Shutdown(Exception):
            pass

        def on_signal(signum: int, frame: object) -> None:
            raise _Shutdown(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        tls: dict[str, Any] = {}
        if self.config.api_tls:
            from cloud_hub.enrollment.hubdir import server_tls_files

            files = server_tls_files(self.config.data_dir, self.config.api_tls_hostnames)
            tls = {"ssl_certfile": str(files.certfile), "ssl_keyfile": str(files.keyfile)}
        context = self.context

        class _Server(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                # uvicorn waits for open responses: the live streams end on this flag
                if context is not None:
                    context.shutting_down.set()
                await super().shutdown(sockets)

        server = _Server(
            uvicorn.Config(
                self.app,
                host=self.config.api_host,
                port=self.config.api_port,
                log_level="info",
                access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                **tls,
            )
        )
        try:
            server.run()
        except _Shutdown:
            log.info("hub shutting down")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        self._stop.set()
        if self.context is not None:
            self.context.shutting_down.set()
        if self.engine is not None:
            self.engine.wake()
        if self._engine_thread is not None:
            self._engine_thread.join(timeout=10)
        if self._housekeeping is not None:
            self._housekeeping.join(timeout=5)
        if self._trust_thread is not None:
            self.trust_publisher.wake()
            self._trust_thread.join(timeout=10)
        if self.ingest is not None:
            self.ingest.stop()
        if self.publisher is not None:
            try:
                self.publisher.close()
            except Exception:
                log.debug("publisher close", exc_info=True)
        if self._app is not None:
            flush_audit(self._app)  # the anonymous refusal counts still held
        if self.registry is not None:
            self.registry.close()

    def _mark_silent_offline(self) -> None:
        """Devices whose last will never arrived (broker restart, lost session) go offline
        once silent for ``offline_after_s``."""
        assert self.registry is not None
        period = min(60.0, self.config.offline_after_s / 4)
        while not self._stop.wait(period):
            try:
                with self.registry.session() as s:
                    n = devices.mark_silent_offline(
                        s, silent_since=time.time() - self.config.offline_after_s
                    )
                if n:
                    log.info("%d silent device(s) marked offline", n)
            except SQLAlchemyError as exc:
                log.warning("housekeeping skipped: %s", exc)

    # -- optional parts ----------------------------------------------------------------------
    def _open_bundle_store(self) -> BundleStore | None:
        """The bundle store beside the key folder; registers the bundles in it that the
        registry does not know yet (built by ``cloud-hub bundle build``, or dropped there),
        each only if it verifies against the hub's own keys (R1)."""
        assert self.registry is not None
        keys = KeyStore(self.config.keys_path)
        if not keys.exists():
            log.warning("no key store at %s: bundle uploads and deltas are off", keys.directory)
            return None
        store = default_store(keys)
        index_store_bundles(self.registry, store, now=time.time())
        return store

    def _build_engine(self) -> Any:
        try:
            from cloud_hub.keys import KeyStore
            from cloud_hub.rollout.engine import RolloutService

            rollout_pkg = importlib.import_module("cloud_hub.rollout")
        except ImportError as exc:
            log.warning("rollout engine disabled: %s", exc)
            return None
        keys = KeyStore(self.config.keys_path)
        if not keys.exists():
            log.warning(
                "rollout engine disabled: no key store at %s (cloud-hub keys init)",
                self.config.keys_path,
            )
            return None
        factory = getattr(rollout_pkg, "PublisherDelivery", None)
        if factory is None:
            log.warning("rollout engine disabled: cloud_hub.rollout has no PublisherDelivery yet")
            return None
        try:
            delivery = factory.from_hub_config(self.config, keys, tuning=self.wiring.publisher)
        except (HubError, FedfleetError, AttributeError) as exc:
            log.warning("rollout engine disabled: delivery not available: %s", exc)
            return None
        self.publisher = delivery
        assert self.registry is not None
        registry = self.registry

        def installed(device_ids: Any) -> dict[str, str | None]:
            # a device that applied a delta reports the delta's id (the catalog does not
            # index deltas): the base of its next delta is the full bundle it now runs
            with registry.session() as s:
                return {d: _running_bundle(s, devices.find_device(s, d)) for d in device_ids}

        def indexed(bundle_id: str) -> bool:
            with registry.session() as s:
                return catalog.find_bundle(s, bundle_id) is not None

        if self.wiring.deltas and hasattr(delivery, "installed_lookup"):
            delivery.installed_lookup = installed  # deltas against what devices run
            delivery.indexed_lookup = indexed  # R1: ... and only between indexed bundles
        wrap = self.wiring.wrap_delivery
        return RolloutService(
            self.registry,
            wrap(delivery) if wrap is not None else delivery,
            keys,
            config=self.wiring.engine,
        )

    def _start_trust_publisher(self) -> None:
        """R10: keep the retained keyring and freshness topics current, over the rollout
        publisher's broker connection (so it needs the key store and the engine)."""
        delivery = self.publisher
        fleet = getattr(delivery, "publisher", None)
        if fleet is None or self.registry is None:
            log.warning("trust topics not published (no rollout publisher): devices report stale")
            return
        from cloud_hub.trust_publisher import TrustPublisher, released_from_registry

        self.trust_publisher = trust = TrustPublisher(
            delivery.keys,
            topics=TopicScheme(self.config.topic_prefix),
            publish=fleet.publish_retained,
            released=released_from_registry(self.registry),
        )
        self._trust_thread = threading.Thread(
            target=trust.run, args=(self._stop,), name="trust-publisher", daemon=True
        )
        self._trust_thread.start()
        log.info("keyring and freshness published on %s/trust/ (retained)", trust.topics.root)

    def _build_enrollment(self) -> Any:
        try:
            from cloud_hub.enrollment.hubdir import open_enrollment
            from cloud_hub.enrollment.service import EnrollmentConfig

            cfg = self.config
            return open_enrollment(
                cfg.data_dir,
                registry=self.registry,
                keys_dir=cfg.keys_path,
                config=EnrollmentConfig(
                    mqtt_url=cfg.device_mqtt_url or cfg.mqtt.url, topic_prefix=cfg.topic_prefix
                ),
            )
        except ImportError as exc:
            log.info("enrollment disabled: %s", exc)
        except (HubError, FedfleetError, OSError) as exc:
            log.warning("enrollment disabled: %s", exc)
        return None

    @staticmethod
    def _mount_optional(app: FastAPI, context: ApiContext) -> None:
        if context.enrollment is not None:
            try:
                from cloud_hub.enrollment.router import enrollment_router

                app.include_router(enrollment_router(context.enrollment))
            except ImportError as exc:
                log.info("enrollment router not mounted: %s", exc)
        try:
            dashboard = importlib.import_module("cloud_hub.dashboard")
        except ImportError:
            return
        mount = getattr(dashboard, "mount", None)
        if callable(mount):
            mount(app, context)
            log.info("dashboard mounted under /ui")
