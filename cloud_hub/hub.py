"""The hub process, assembled in one place: :func:`build_hub` returns a :class:`Hub`.

``cloud-hub serve``, the demo and the fleet simulation all run the hub this way::

    with build_hub(HubConfig(db_url=..., mqtt=BrokerEndpoint(port=1883))) as hub:
        serve_api(hub)  # or any ASGI server over hub.app

:func:`build_hub` opens every part (registry, bundle store, MQTT publisher, rollout engine,
retraining controller, ingest, enrollment, API app with its dashboard, trust publisher) and
wires them together; :meth:`Hub.start` starts what runs in the background (ingest, engine
loop, retraining controller, trust topics, housekeeping) and :meth:`Hub.stop` stops and
closes everything.

Inside a hub the device reports reach the hub once: the ingest reads them, writes the
registry and hands them to the publisher, which follows its deployments from them and reads
which devices are online from the registry. Parts that cannot run say so in the log: the
rollout engine and the trust topics need a key store (``cloud-hub keys init``); the
retraining controller runs only beside the rollout engine (one hub process trains and rolls
out; ``serve --no-engine`` replicas run neither) and only with its ``[retraining]`` settings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from fastapi import FastAPI

from cloud_hub.api.app import create_app
from cloud_hub.api.auth import flush_audit
from cloud_hub.api.context import ApiContext
from cloud_hub.broker_client import HubRole, hub_client_id_for
from cloud_hub.bundles import BundleStore, default_store
from cloud_hub.config import HubConfig
from cloud_hub.delivery import FleetPublisher, PublisherConfig, RegistryDevices
from cloud_hub.delivery.config import PublisherTuning
from cloud_hub.enrollment.service import EnrollmentService
from cloud_hub.errors import HubError
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.ingest.workers import (
    WorkerPool,
    WorkerSpec,
    resolve_workers,
    retire_sessions,
    share_group,
)
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, open_registry
from cloud_hub.registry.bundle_index import index_store_bundles
from cloud_hub.registry.errors import DatabaseError
from cloud_hub.rollout.commands import RolloutCommands
from cloud_hub.rollout.delivery import PublisherDelivery, RolloutDelivery
from cloud_hub.rollout.engine import EngineConfig, RolloutService
from cloud_hub.trust_publisher import TrustPublisher, released_from_registry
from shared.errors import FedfleetError
from shared.topics import TopicScheme

if TYPE_CHECKING:
    from cloud_hub.loop.controller import RetrainController

__all__ = ["Hub", "RolloutWiring", "build_hub"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutWiring:
    """How the rollout engine is assembled; the defaults are ``cloud-hub serve``'s. The
    fleet simulation tunes it and wraps the delivery to count what it sent."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    publisher: PublisherTuning = field(default_factory=PublisherTuning)
    deltas: bool = True  # offer each device a delta against what it runs when smaller
    wrap_delivery: Callable[[PublisherDelivery], RolloutDelivery] | None = None


@dataclass
class _Runtime:
    """What a started hub runs in the background."""

    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    started: bool = False
    stopped: bool = False


@dataclass(frozen=True, eq=False)
class Hub:
    """Every long-lived part of one hub process, built and wired by :func:`build_hub`.

    ``delivery`` (with the MQTT publisher inside), ``engine`` and ``trust_publisher`` are
    ``None`` without a key store or with the engine turned off; ``ingest`` is ``None`` with
    ``enable_ingest`` off; ``retraining`` (the closed loop's controller) is ``None`` without
    the engine, with retraining turned off or without its settings. Without the engine the
    rollout commands are registry writes that the engine of another hub process carries
    out (``serve --no-engine`` replicas)."""

    config: HubConfig
    registry: Registry
    bundles: BundleStore | None
    delivery: PublisherDelivery | None
    engine: RolloutService | None
    ingest: FleetIngest | None
    context: ApiContext
    app: FastAPI
    trust_publisher: TrustPublisher | None
    retraining: RetrainController | None = None
    _runtime: _Runtime = field(default_factory=_Runtime, repr=False)

    @property
    def publisher(self) -> FleetPublisher | None:
        """The MQTT fleet publisher the rollout engine delivers through."""
        return self.delivery.publisher if self.delivery is not None else None

    def start(self) -> Hub:
        """Start the ingest, the engine loop, the trust topics and housekeeping."""
        run = self._runtime
        if run.started:
            return self
        run.started = True
        if self.ingest is not None:
            self.ingest.start()
            log.info(
                "ingest %s subscribed on %s under %s/",
                self.ingest.settings.client_id,
                self.config.mqtt.url,
                self.config.topic_prefix,
            )
        if self.engine is not None:
            self._spawn("rollout-engine", self.engine.run)
            log.info("rollout engine running")
        if self.retraining is not None:
            self._spawn("retrain-controller", self.retraining.run)
            log.info("retraining controller running")
        if self.trust_publisher is not None:
            self._spawn("trust-publisher", self.trust_publisher.run)
            log.info(
                "keyring and freshness published on %s/trust/ (retained)",
                self.trust_publisher.topics.root,
            )
        else:
            log.warning("trust topics not published (no rollout publisher): devices report stale")
        if self.config.offline_after_s:
            self._spawn("hub-housekeeping", self._mark_silent_offline)
        return self

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self._runtime.stop,), name=name, daemon=True)
        self._runtime.threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Stop the background work, then close every part (safe to call twice)."""
        run = self._runtime
        if run.stopped:
            return
        run.stopped = True
        run.stop.set()
        self.context.shutting_down.set()
        if self.engine is not None:
            self.engine.wake()
        if self.trust_publisher is not None:
            self.trust_publisher.wake()
        if self.retraining is not None:
            self.retraining.abort()  # a run on the devices ends now, recorded as failed
        for thread in run.threads:
            thread.join(timeout=10)
        if self.ingest is not None and run.started:
            self.ingest.stop()
        if self.delivery is not None:
            try:
                self.delivery.close()
            except Exception:
                log.debug("publisher close", exc_info=True)
        flush_audit(self.app)  # the anonymous refusal counts still held
        self.registry.close()

    def __enter__(self) -> Hub:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _mark_silent_offline(self, stop: threading.Event) -> None:
        """Devices whose last will never arrived (broker restart, lost session) go offline
        once silent for ``offline_after_s``."""
        silent_s = self.config.offline_after_s
        while not stop.wait(min(60.0, silent_s / 4)):
            try:
                with self.registry.session() as s:
                    n = devices.mark_silent_offline(s, silent_since=time.time() - silent_s)
                if n:
                    log.info("%d silent device(s) marked offline", n)
            except DatabaseError as exc:  # try again next period
                log.warning("housekeeping skipped: %s", exc)


def build_hub(
    config: HubConfig,
    *,
    rollout_engine: bool = True,
    retraining: bool = True,
    wiring: RolloutWiring | None = None,
) -> Hub:
    """Open and wire every part of a hub process (nothing runs until :meth:`Hub.start`).

    ``rollout_engine=False``: no engine, publisher, trust topics or retraining controller in
    this process. ``retraining=False``: no retraining controller (``serve --no-retraining``);
    else it runs beside the engine as ``config.retraining`` says."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    wiring = wiring or RolloutWiring()
    with contextlib.ExitStack() as opened:  # closes what was opened if a later part fails
        registry = open_registry(config.database_url)
        opened.callback(registry.close)
        keys = KeyStore(config.keys_path)
        bundles = _open_bundle_store(registry, keys)
        delivery = None
        if rollout_engine and bundles is not None:
            delivery = _connect_delivery(config, registry, keys, bundles, wiring)
        elif rollout_engine:
            log.warning("rollout engine disabled: no key store (cloud-hub keys init)")
        engine = None
        if delivery is not None:
            opened.callback(delivery.close)
            wrap = wiring.wrap_delivery
            engine = RolloutService(
                registry, wrap(delivery) if wrap else delivery, keys, config=wiring.engine
            )
        controller = _retrain_controller(config, registry, keys, engine) if retraining else None
        ingest = _build_ingest(config, registry, delivery, engine)
        context = ApiContext(
            registry=registry,
            # without the engine the commands are registry writes only (a replica)
            rollouts=engine or RolloutCommands(registry),
            enrollment=_open_enrollment(config, registry),
            ingest_stats=ingest.stats if ingest is not None else None,
            bundles=bundles,
        )
        hub = Hub(
            config=config,
            registry=registry,
            bundles=bundles,
            delivery=delivery,
            engine=engine,
            ingest=ingest,
            context=context,
            app=_api_app(context),
            trust_publisher=_trust_publisher(config, registry, delivery),
            retraining=controller,
        )
        opened.pop_all()
    return hub


def _retrain_controller(
    config: HubConfig, registry: Registry, keys: KeyStore, engine: RolloutService | None
) -> RetrainController | None:
    """The closed loop's controller, only where the rollout engine runs: one hub trains, and
    the rollouts it creates are this engine's."""
    if engine is None:
        if config.retraining.enabled and config.retraining.configured:
            log.warning("retraining controller off: it runs only beside the rollout engine")
        return None
    from cloud_hub.loop.serving import retrain_controller

    return retrain_controller(config, registry=registry, keys=keys, rollouts=engine)


def _open_bundle_store(registry: Registry, keys: KeyStore) -> BundleStore | None:
    """The bundle store beside the key folder; registers the bundles in it that the
    registry does not know yet (built by ``cloud-hub bundle build``, or dropped there),
    each only if it verifies against the hub's own keys (R1)."""
    if not keys.exists():
        log.warning("no key store at %s: bundle uploads and deltas are off", keys.directory)
        return None
    store = default_store(keys)
    index_store_bundles(registry, store, now=time.time())
    return store


def _connect_delivery(
    config: HubConfig,
    registry: Registry,
    keys: KeyStore,
    bundles: BundleStore,
    wiring: RolloutWiring,
) -> PublisherDelivery | None:
    """The rollout engine's MQTT delivery, ``None`` when the broker cannot be reached. With
    the ingest on, the publisher subscribes to chunk requests only (the ingest hands it the
    device reports); either way it reads which devices are online from the registry."""
    settings = PublisherConfig(
        broker=config.mqtt,
        prefix=config.topic_prefix,
        client_id=hub_client_id_for(config, HubRole.ROLLOUT),
        reads_device_reports=not config.enable_ingest,
    )
    publisher = FleetPublisher(wiring.publisher.apply(settings), devices=RegistryDevices(registry))
    try:
        publisher.connect()
    except (HubError, FedfleetError) as exc:
        log.warning("rollout engine disabled: delivery not available: %s", exc)
        return None
    delivery = PublisherDelivery(publisher, keys, bundles)
    if wiring.deltas:  # deltas against what devices run, only between indexed bundles (R1)
        delivery.installed_lookup = lambda ids: _running_bundles(registry, ids)
        delivery.indexed_lookup = lambda bundle_id: _indexed(registry, bundle_id)
    return delivery


def _running_bundles(registry: Registry, device_ids: Iterable[str]) -> dict[str, str | None]:
    """The indexed bundle each device runs: the one it reports or, when that is a delta
    built for it (the catalog does not index deltas), the full bundle of the same model,
    class and version: the base of its next delta."""
    with registry.session() as s:
        found = devices.find_devices(s, device_ids)
        running: dict[str, str | None] = {}
        for device_id in device_ids:
            device = found.get(device_id)
            bundle_id = device.installed_bundle_id if device is not None else None
            if device is None or bundle_id is None or catalog.find_bundle(s, bundle_id) is not None:
                running[device_id] = bundle_id
                continue
            full = (
                catalog.find_full_bundle(
                    s,
                    model_name=device.installed_model,
                    device_class=device.device_class,
                    version=device.installed_version,
                )
                if device.installed_model
                and device.device_class
                and device.installed_version is not None
                else None
            )
            running[device_id] = full.bundle_id if full is not None else bundle_id
        return running


def _indexed(registry: Registry, bundle_id: str) -> bool:
    with registry.session() as s:
        return catalog.find_bundle(s, bundle_id) is not None


def _build_ingest(
    config: HubConfig,
    registry: Registry,
    delivery: PublisherDelivery | None,
    engine: RolloutService | None,
) -> FleetIngest | None:
    """The hub's one subscriber of device reports; it hands them to the publisher and wakes
    the engine when events were committed."""
    if not config.enable_ingest:
        return None
    connection = IngestConnection(
        endpoint=config.mqtt, client_id=hub_client_id_for(config, HubRole.INGEST)
    )
    workers = resolve_workers(config.ingest.workers, config.database_url)
    before = retire_sessions(config.data_dir, connection, workers)
    pool = None
    if workers:  # telemetry through shared subscriptions in worker processes
        spec = WorkerSpec(
            db_url=config.database_url,
            topic_prefix=config.topic_prefix,
            connection=connection,
            config=config.ingest,
            group=share_group(config.data_dir),
            index=0,
        )
        pool = WorkerPool(spec, workers, sessions_exist=before >= workers)
    ingest = FleetIngest(
        registry,
        scheme=TopicScheme(config.topic_prefix),
        mqtt_settings=connection,
        config=config.ingest,
        pool=pool,
    )
    if delivery is not None:
        publisher = delivery.publisher
        ingest.add_observer(lambda inbound: publisher.observe(inbound.message))
    if engine is not None:
        ingest.add_listener(lambda committed: engine.wake() if committed.events_new else None)
    return ingest


def _open_enrollment(config: HubConfig, registry: Registry) -> EnrollmentService | None:
    from cloud_hub.enrollment.hubdir import open_enrollment
    from cloud_hub.enrollment.service import EnrollmentConfig

    try:
        return open_enrollment(
            config.data_dir,
            registry=registry,
            keys_dir=config.keys_path,
            config=EnrollmentConfig(
                mqtt_url=config.device_mqtt_url or config.mqtt.url,
                topic_prefix=config.topic_prefix,
            ),
        )
    except (HubError, FedfleetError, OSError) as exc:
        log.warning("enrollment disabled: %s", exc)
    return None


def _api_app(context: ApiContext) -> FastAPI:
    """The REST API with the enrollment router (when enrollment is on) and the dashboard."""
    from cloud_hub.dashboard import mount
    from cloud_hub.enrollment.router import enrollment_router

    app = create_app(context)
    if context.enrollment is not None:
        app.include_router(enrollment_router(context.enrollment))
    mount(app, context)
    log.info("dashboard mounted under /ui")
    return app


def _trust_publisher(
    config: HubConfig, registry: Registry, delivery: PublisherDelivery | None
) -> TrustPublisher | None:
    """R10: the retained keyring and freshness topics, kept current over the rollout
    publisher's broker connection (so they need the key store and the engine)."""
    if delivery is None:
        return None
    return TrustPublisher(
        delivery.keys,
        topics=TopicScheme(config.topic_prefix),
        publish=delivery.publisher.publish_retained,
        released=released_from_registry(registry),
    )
