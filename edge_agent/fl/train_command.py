"""The agent's answer to a ``TrainCommand``: join the hub's Flower run with a SuperNode.

R4: the device acts only on the *signed training order* inside the command
(:mod:`shared.fl.order`), verified against the trust root pinned at enrollment and the
root-signed keyring: the SuperLink address, the hub's run id, the FAB hash, whether plain
text is allowed, whether SecAgg+ is required, the target device and the expiry all come from
it. An unsigned, forged, expired, replayed or other-device order is refused *before*
anything changes (a running SuperNode keeps running), logged, and reported to the hub as a
``rejected`` event with the reason.

On an accepted order the device exports the labelled part of its sample store to an
``.npz`` under its state directory (raw samples never leave the device — only masked model
updates do), records the order id (replays are refused until it expires), and starts a
supervised SuperNode pinned to the order's FAB (:mod:`edge_agent.fl.pinned_supernode`),
over TLS verified against the hub CA pinned at enrollment unless the order *and* the
device's own settings allow plain text. The SuperNode stops when the order expires (or
``max_duration_s``), on a signed stop for the same run, or when the agent stops.

Command ``config`` keys (unsigned hints; they can only lower the device's limits):
``duration_s``, ``max_samples``, ``stop``.

Hooked in with ``agent.add_command_handler(TrainCommand, TrainCommandHandler(...))``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import AgentConfigError
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.errors import FedfleetError, VerificationError
from shared.files import atomic_write
from shared.fl.config_keys import AsyncTrainingKey, NodeConfigKey
from shared.fl.order import OrderLedger, TrainingOrder, verify_training_order
from shared.messages import Event, EventKind, Message, TrainCommand, new_id
from shared.net import free_port
from shared.signing import TrustRoot, parse_time

__all__ = ["OrderRefusedError", "OrderTrust", "TrainCommandHandler", "TrainingLimits"]

log = logging.getLogger(__name__)


class OrderRefusedError(VerificationError):
    """The device's own policy refuses a training command or a validly signed order (R4)."""


@dataclass(frozen=True)
class TrainingLimits:
    """What this device allows a training run (the hub cannot raise these)."""

    allow_insecure: bool = False  # accept plain-text SuperLinks (loopback demos, tests)
    root_certificates: Path | None = None  # the hub CA pinned at enrollment (verifies TLS)
    require_secure_aggregation: bool = False  # this device (class) trains only under SecAgg+
    max_samples: int = 5000
    min_samples: int = 10
    max_duration_s: float = 3600.0
    batch_size: int = 32
    max_local_epochs: int = 2
    time_budget_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_samples <= self.max_samples <= 10_000_000:
            raise AgentConfigError("need 1 <= min_samples <= max_samples")
        if not 0 < self.max_duration_s <= 86_400:
            raise AgentConfigError("max_duration_s must be in (0, 86400]")

    def check(self, order: TrainingOrder) -> None:
        """The device's own refusals of a signed order (R4)."""
        if order.insecure and not self.allow_insecure:
            raise OrderRefusedError("R4: the order asks for a plain-text SuperLink; not allowed")
        if not order.insecure and self.root_certificates is None:
            raise OrderRefusedError("R4: no hub CA pinned to verify the SuperLink's TLS")
        if self.require_secure_aggregation and not order.secure_aggregation:
            raise OrderRefusedError("R4: this device requires SecAgg+; the order turns it off")


def _no_floor() -> int:
    return 0


@dataclass(frozen=True)
class OrderTrust:
    """What the handler verifies orders with."""

    device_id: str
    trust: TrustRoot
    keyring_floor: Callable[[], int] = _no_floor  # newest keyring version seen (no rollback)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _check_command_agrees(command: TrainCommand, order: TrainingOrder) -> None:
    unsigned = (command.run_id, command.superlink, command.model_name)
    if unsigned != (order.run_id, order.superlink, order.model_name):
        raise OrderRefusedError("R4: the command's run, SuperLink or model differ from its order")


class TrainCommandHandler:
    """Callable for ``EdgeAgent.add_command_handler(TrainCommand, ...)``; never raises."""

    def __init__(
        self,
        *,
        state_dir: Path,
        load_samples: Callable[[int], tuple[np.ndarray, np.ndarray]],
        trust: OrderTrust,
        limits: TrainingLimits | None = None,
        report: Callable[[Message], None] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.load_samples = load_samples
        self.trust = trust
        self.limits = limits or TrainingLimits()
        self.report = report
        self.clock = clock
        self.supervisor: SuperNodeSupervisor | None = None
        self.run_id: str | None = None
        self.refusals: list[str] = []  # reasons, newest last (each also reported)
        self._ledger_path = self.state_dir / "fl" / "orders.json"
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, command: TrainCommand) -> None:
        try:
            self.handle(command)
        except Exception as exc:  # a bad command must not stop the agent's worker
            self._refused(command, exc)

    def _refused(self, command: TrainCommand, exc: Exception) -> None:
        reason = f"training order refused: {type(exc).__name__}: {exc}"
        log.warning("train command %s (run %s) %s", command.command_id, command.run_id, reason)
        self.refusals.append(reason)
        if self.report is None:
            return
        try:
            self.report(
                Event(
                    device_id=self.trust.device_id,
                    event_id=new_id(),
                    kind=EventKind.REJECTED,
                    detail=reason,
                    data={"command": TrainCommand.TYPE, "run_id": command.run_id},
                )
            )
        except Exception:
            log.exception("could not report the refused training order")

    def verify(self, command: TrainCommand) -> TrainingOrder:
        """The command's signed order, checked for this device now (raises if refused)."""
        if command.order is None or command.keyring is None:
            raise OrderRefusedError("R4: unsigned training command (no signed order)")
        order = verify_training_order(
            command.order,
            command.keyring,
            trust=self.trust.trust,
            device_id=self.trust.device_id,
            now=self.clock(),
            min_keyring_version=self.trust.keyring_floor(),
        )
        _check_command_agrees(command, order)
        return order

    def handle(self, command: TrainCommand) -> None:
        order = self.verify(command)  # nothing changes before the order checks out
        cfg: dict[str, Any] = dict(command.config)
        if cfg.get("stop"):  # a signed stop ends only the run it names
            if order.run_id == self.run_id:
                self.stop()
                log.info("training run %s: stopped by the hub", order.run_id)
            else:
                log.info("training run %s: stop received, it is not running", order.run_id)
            return
        ledger = self._ledger()
        ledger.check_unused(order)
        self.limits.check(order)
        limit = min(int(cfg.get("max_samples", self.limits.max_samples)), self.limits.max_samples)
        x, y = self.load_samples(limit)
        if len(y) < self.limits.min_samples:
            raise AgentConfigError(f"only {len(y)} labelled samples (< {self.limits.min_samples})")
        now = self.clock()
        self._save_ledger(ledger.record(order, now))  # before starting: no replay after a crash
        self.stop()
        self._start(order, x, y, self._duration(order, cfg, now))

    def _duration(self, order: TrainingOrder, cfg: dict[str, Any], now: datetime) -> float:
        left = (parse_time(order.expires, "training order expires") - now).total_seconds()
        asked = float(cfg.get("duration_s", self.limits.max_duration_s))
        return max(1.0, min(asked, left, self.limits.max_duration_s))

    def _start(self, order: TrainingOrder, x: np.ndarray, y: np.ndarray, duration: float) -> None:
        work = self.state_dir / "fl"
        work.mkdir(parents=True, exist_ok=True)
        data_path = work / "train.npz"
        tmp = work / "train.tmp.npz"
        np.savez(tmp, x=x, y=y)
        tmp.replace(data_path)
        supervisor = SuperNodeSupervisor(
            SuperNodeConfig(
                superlink=order.superlink,
                data_path=data_path,
                clientappio_port=free_port(),
                insecure=order.insecure,
                root_certificates=None if order.insecure else self.limits.root_certificates,
                batch_size=self.limits.batch_size,
                max_local_epochs=self.limits.max_local_epochs,
                time_budget_s=self.limits.time_budget_s,
                fab_sha256=order.fab_sha256,
                extra_node_config={
                    NodeConfigKey.ORDER_RUN_ID: order.run_id,
                    NodeConfigKey.REQUIRE_SECURE_AGGREGATION: order.secure_aggregation
                    or self.limits.require_secure_aggregation,
                    # an asynchronous run's held update: in the agent's state, survives restarts
                    AsyncTrainingKey.HELD_UPDATE_DIR: str(work / "held"),
                },
            ),
            log_path=work / "supernode.log",
        )
        supervisor.start()
        with self._lock:
            self.supervisor, self.run_id = supervisor, order.run_id
            self._timer = threading.Timer(duration, self.stop)
            self._timer.daemon = True
            self._timer.start()
        log.info(
            "training run %s: SuperNode for %s (FAB %s…) with %d samples, up to %.0fs",
            order.run_id,
            order.superlink,
            order.fab_sha256[:12],
            len(y),
            duration,
        )

    def _ledger(self) -> OrderLedger:
        try:
            return OrderLedger.from_dict(json.loads(self._ledger_path.read_text()))
        except FileNotFoundError:
            return OrderLedger()
        except (OSError, ValueError, FedfleetError) as exc:
            # refusing every order is safer than forgetting which were used
            raise AgentConfigError(f"order ledger {self._ledger_path} unreadable: {exc}") from exc

    def _save_ledger(self, ledger: OrderLedger) -> None:
        self._ledger_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._ledger_path, json.dumps(ledger.to_dict()).encode())

    def stop(self) -> None:
        with self._lock:
            supervisor, self.supervisor = self.supervisor, None
            timer, self._timer = self._timer, None
            self.run_id = None
        if timer is not None:
            timer.cancel()
        if supervisor is not None:
            supervisor.stop()
