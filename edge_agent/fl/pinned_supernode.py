"""``flower-supernode`` that runs only the FAB a signed training order names (R4).

Flower's own FAB check (``flower-supernode --trusted-entities``) accepts only FABs that
carry verification records from Flower's hosted app platform (``valid_license``); a
self-hosted SuperLink running a local FAB sends none, so that option refuses every fedfleet
run (Flower 1.41, ``flwr/supernode/start_client_internal.py``). Without it the SuperNode runs
whatever FAB its SuperLink sends: code execution on the device, next to its sample store.

This entry point runs Flower's SuperNode unchanged except where it receives a FAB
(``_pull_and_store_message``): the FAB counts as verified only if the sha256 of its bytes,
and the hash the SuperLink claims for it, equal ``--fab-sha256`` (the hash in the signed
order). Any other FAB takes Flower's own refusal path: it is neither stored nor run, and the
SuperLink gets a ``FAB_VERIFICATION_ERROR`` reply for that node, so the run fails loudly.

Speed: Flower 1.41's SuperNode sleeps a fixed 3 s after every empty pull and then waits
for the ClientApp's reply in 0.5 s sleeps (``start_client_internal``): up to 3.5 s on every
node between each SecAgg+ stage. This entry point pulls again ``--poll-interval`` seconds
(0.05) after a message, then ever less often up to ``--idle-poll-interval`` (0.5 s) while
nothing arrives (:class:`shared.poll_backoff.PollBackoff`: each empty pull costs CPU on
both ends), so Flower's 3 s sleep is never reached, and
caps the SuperNode module's sleeps at ``REPLY_POLL_INTERVAL_S`` (0.05 s), so a reply goes
to the SuperLink as soon as the ClientApp wrote it. By default (``--clientapp in-process``)
the SuperNode runs each message's ClientApp itself (:mod:`edge_agent.fl.inprocess_clientapp`:
no SuperExec, no task process, no runtime-API round trips); ``--clientapp forked`` keeps
Flower's process per task, started from :mod:`edge_agent.fl.warm_clientapp` where Flower
starts ``flower-superexec`` (forked from one warm process instead of each importing Flower
and torch anew).

Usage (what :class:`edge_agent.fl.supernode.SuperNodeConfig` builds)::

    python -m edge_agent.fl.pinned_supernode --fab-sha256 HEX <flower-supernode arguments>
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from edge_agent.fl.inprocess_clientapp import run_clientapps_in_process
from edge_agent.fl.supernode import CLIENTAPP_MODES
from edge_agent.fl.warm_clientapp import warm_imports
from shared.flower_long_poll import was_held
from shared.flower_node_auth import reuse_node_signatures
from shared.flower_pulls import retry_object_pulls_sooner
from shared.poll_backoff import PollBackoff
from shared.warm_superexec import use_warm_superexec

__all__ = [
    "CLIENTAPP_MODES",
    "CLIENTAPP_READY_LINE",
    "DEFAULT_POLL_INTERVAL_S",
    "IDLE_POLL_INTERVAL_S",
    "REPLY_POLL_INTERVAL_S",
    "fab_matches",
    "main",
    "pin_fab",
    "reply_without_delay",
    "use_warm_clientapps",
]

log = logging.getLogger(__name__)

# The name under which the order's hash stands in Flower's trusted-entities slot.
TRUSTED_ENTITY = "fedfleet-training-order"
# Seconds before the SuperNode pulls again right after a message (Flower's own: 3 s) ...
DEFAULT_POLL_INTERVAL_S = 0.05
# ... growing by half per empty pull up to this while nothing arrives (shared.poll_backoff).
IDLE_POLL_INTERVAL_S = 0.5
# The longest sleep of the SuperNode's own loops (it waits for a reply in 0.5 s sleeps).
REPLY_POLL_INTERVAL_S = 0.05
# Logged once the in-process ClientApp is imported and warm (Flower logs "Starting Flower
# SuperExec" when a forked-task SuperNode's executor is up).
CLIENTAPP_READY_LINE = "ClientApp ready in the SuperNode's process"


def fab_matches(content: bytes, claimed_hash: str, expected_sha256: str) -> bool:
    """True when a FAB's bytes and its claimed hash both equal the order's hash."""
    return hashlib.sha256(content).hexdigest() == expected_sha256 == claimed_hash


def pin_fab(expected_sha256: str, backoff: PollBackoff | None = None) -> None:
    """Make this process's Flower SuperNode accept only the FAB ``expected_sha256`` and
    pull again after ``backoff``'s waits while it has nothing to do (default: 0.05 s after a
    message, growing to :data:`IDLE_POLL_INTERVAL_S`)."""
    waits = backoff or PollBackoff(fast_s=DEFAULT_POLL_INTERVAL_S, slow_s=IDLE_POLL_INTERVAL_S)
    from flwr.supercore.fab import Fab
    from flwr.supernode import start_client_internal as supernode

    if not hasattr(supernode, "_pull_and_store_message") or not hasattr(
        supernode, "_verify_fab"
    ):  # a Flower other than 1.41: refuse to run unpinned
        raise SystemExit("pinned_supernode: this Flower SuperNode has no FAB check to pin")
    original_pull: Callable[..., int | None] = supernode._pull_and_store_message

    def verify(fab: Fab, trusted_entities: dict[str, str]) -> bool:
        # R4: the SuperNode runs only the FAB whose hash the signed training order names
        if fab_matches(fab.content, fab.hash_str, expected_sha256):
            return True
        log.error(
            "R4: FAB %s refused: the signed training order names FAB %s",
            hashlib.sha256(fab.content).hexdigest(),
            expected_sha256,
        )
        return False

    def pull(**kwargs: Any) -> int | None:
        get_fab: Callable[[str, int], Any] = kwargs["get_fab"]

        def fetch(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            # a self-hosted SuperLink sends no platform record; the order's hash is the check
            return Fab(fab.hash_str, fab.content, {"valid_license": TRUSTED_ENTITY})

        kwargs["get_fab"] = fetch
        kwargs["trusted_entities"] = {TRUSTED_ENTITY: expected_sha256}
        # poll here, soon after the last message: Flower sleeps 3 s after each empty pull;
        # an empty answer the SuperLink held for a while (shared.flower_long_poll) is
        # followed by the next pull at once
        while True:
            asked = time.monotonic()
            if (run_id := original_pull(**kwargs)) is not None:
                waits.activity()
                return run_id
            if not was_held(time.monotonic() - asked):
                time.sleep(waits.next_wait_s())

    # Flower 1.41 looks both names up in its module at call time
    supernode._pull_and_store_message = pull  # type: ignore[assignment]
    supernode._verify_fab = verify


class _CappedSleepTime:
    """Stands in for ``time`` in Flower's SuperNode module: every sleep lasts at most
    ``cap_s`` seconds (the module only sleeps to wait for a reply or a message)."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s))


def reply_without_delay(cap_s: float = REPLY_POLL_INTERVAL_S) -> None:
    """Make this process's SuperNode notice a ClientApp's reply within ``cap_s`` seconds
    (Flower 1.41 looks for it every 0.5 s): one wait less per SecAgg+ stage and node."""
    from flwr.supernode import start_client_internal as supernode

    flower_time = getattr(supernode, "time", None)
    if flower_time is not time and not isinstance(flower_time, _CappedSleepTime):
        raise SystemExit("pinned_supernode: this Flower SuperNode does not sleep in time.sleep")
    supernode.time = _CappedSleepTime(cap_s)  # type: ignore[assignment]


def use_warm_clientapps() -> None:
    """Make this process's SuperNode start :mod:`edge_agent.fl.warm_clientapp`."""
    use_warm_superexec("flwr.supernode.start_client_internal", "edge_agent.fl.warm_clientapp")


def _without_isolation(argv: list[str]) -> list[str]:
    """``argv`` without a ``--isolation`` option (the ClientApp mode decides it)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--isolation":
            skip = True
        elif not arg.startswith("--isolation="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.fl.pinned_supernode")
    parser.add_argument("--fab-sha256", required=True)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    parser.add_argument("--idle-poll-interval", type=float, default=IDLE_POLL_INTERVAL_S)
    parser.add_argument("--clientapp", choices=CLIENTAPP_MODES, default=CLIENTAPP_MODES[0])
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not re.fullmatch(r"[0-9a-f]{64}", args.fab_sha256):
        parser.error("--fab-sha256 must be 64 lowercase hex digits")
    if not 0.01 <= args.poll_interval <= args.idle_poll_interval <= 10:
        parser.error("need 0.01 <= --poll-interval <= --idle-poll-interval <= 10 seconds")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per pull otherwise
    pin_fab(args.fab_sha256, PollBackoff(fast_s=args.poll_interval, slow_s=args.idle_poll_interval))
    reply_without_delay()
    retry_object_pulls_sooner()  # a message's objects arrive just after the message
    reuse_node_signatures()  # one signed timestamp per second, not one per request
    if args.clientapp == "in-process":
        run_clientapps_in_process()
        warm_imports()  # the first message must not pay for importing torch and the app
        log.info("%s", CLIENTAPP_READY_LINE)
        rest = [*_without_isolation(rest), "--isolation", "process"]  # no SuperExec to start
    elif os.name == "posix":  # forking needs POSIX
        use_warm_clientapps()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
