"""OTA demo: the hub ships a signed model bundle to a fleet of real edge agents over MQTT.

Nothing to set up: it starts a private Mosquitto on a free loopback port (or uses
``--mqtt-url``), creates hub keys, exports a ``shared.models`` model to ONNX with torch, signs
it into a bundle, starts N ``edge-agent run`` processes (each with its own state directory and
the pinned trust root), then:

1. deploys v1 to every agent and waits until all committed (verified, installed into an A/B
   slot, smoke inference passed);
2. deploys v2 the same way;
3. sends a signed rollback order back to v1 and waits until all rolled back.

Every chunk is published once on the bundle's fan-out topic; agents that miss chunks ask for
exactly those again. It prints a summary per step, writes it as JSON (``--out``) and leaves no
process behind.

    python simulations/ota_demo.py --agents 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _step(name: str, result: Any, elapsed: float) -> dict[str, Any]:
    counts = result.summary()
    print(
        f"\n== {name}: {counts} in {elapsed:.1f} s "
        f"({result.chunks_published} chunks published once, {result.repairs_sent} repairs)"
    )
    for device_id, p in sorted(result.devices.items()):
        detail = f"  ({p.detail})" if p.detail and p.state.value not in ("committed",) else ""
        print(f"   {device_id:10s} {p.state.value:12s} {' → '.join(p.history)}{detail}")
    return {
        "step": name,
        "deployment_id": result.deployment_id,
        "bundle_id": result.bundle_id,
        "elapsed_s": round(elapsed, 3),
        "counts": counts,
        "devices": {d: p.state.value for d, p in sorted(result.devices.items())},
        "chunks_published": result.chunks_published,
        "repairs_sent": result.repairs_sent,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fedfleet OTA demo (zero setup)")
    ap.add_argument("--agents", type=int, default=5)
    ap.add_argument("--model", default="sensor-mlp", help="a shared.models model name")
    ap.add_argument("--mqtt-url", default=None, help="use this broker instead of a private one")
    ap.add_argument("--chunk-size", type=int, default=4096, help="small: shows the chunking")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per step")
    ap.add_argument("--out", type=Path, default=Path("results/ota_demo.json"))
    ap.add_argument("--keep", type=Path, default=None, help="keep keys/agents under this folder")
    args = ap.parse_args(argv)

    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from cloud_hub.bundles.sample import export_onnx, preprocess_json
    from cloud_hub.config import parse_mqtt_url
    from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
    from cloud_hub.keys import KeyStore
    from shared.bundle import artifact_info, bundle_id_of, parse_bundle
    from shared.messages import new_id
    from simulations.harness.agents import LocalAgentFleet
    from simulations.harness.mosquitto import LocalMosquitto

    steps: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fedfleet-demo-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        for old in ("hub", "fleet"):  # a kept folder from an earlier run starts over
            shutil.rmtree(work / old, ignore_errors=True)
        if args.mqtt_url:
            url = args.mqtt_url
            print(f"broker: {url} (external)")
        else:
            url = stack.enter_context(LocalMosquitto()).url
            print(f"broker: private mosquitto at {url}")
        broker = parse_mqtt_url(url)
        prefix = f"demo-{new_id()[:8]}"

        keys = KeyStore.init(work / "hub")
        print(f"keys:   root + signing key in {keys.directory} (keyring v{keys.keyring().version})")
        print(f"model:  exporting {args.model} to ONNX with torch ...", flush=True)
        model, pre = export_onnx(args.model), preprocess_json(args.model)
        store = default_store(keys)

        def bundle(version: int) -> bytes:
            arts = [
                (artifact_info("model.onnx", model, "model", "application/onnx"), model),
                (artifact_info("preprocess.json", pre, "preprocess", "application/json"), pre),
            ]
            spec = BundleSpec(
                model_name=args.model,
                device_class="x86-cpu",
                version=version,
                metrics={"note": "demo payload: untrained weights"},
                lineage={"source": "simulations/ota_demo.py"},
            )
            return build_signed_bundle(keys, store, spec, arts).data

        v1, v2 = bundle(1), bundle(2)
        print(f"bundle: v1 and v2 signed ({len(v1)} bytes each)")

        fleet = stack.enter_context(
            LocalAgentFleet(
                root=work / "fleet",
                trust_root=keys.trust_root().to_dict(),
                mqtt_url=url,
                prefix=prefix,
                n=args.agents,
                tables={"timeouts": {"chunk_retry_s": 1.0}},
            )
        )
        print(f"agents: {args.agents} edge-agent processes starting ...", flush=True)
        config = PublisherConfig(broker=broker, prefix=prefix, chunk_size=args.chunk_size)
        pub = stack.enter_context(FleetPublisher(config))
        missing = pub.wait_for_devices(fleet.device_ids, timeout=90)
        if missing:
            print(f"agents did not come online: {missing}", file=sys.stderr)
            for d in missing:
                print(fleet.logs(d, 1500), file=sys.stderr)
            return 1
        print(f"agents: all {args.agents} online")

        ok = True
        for name, data in (("deploy v1", v1), ("deploy v2", v2)):
            t0 = time.monotonic()
            result = pub.deploy(data, fleet.device_ids).wait(timeout=args.timeout)
            steps.append(_step(name, result, time.monotonic() - t0))
            ok = ok and result.all_committed
        order = keys.sign_rollback_order(  # bound to these devices, now on v2 (R5)
            model_name=args.model,
            device_class="x86-cpu",
            to_version=1,
            to_bundle_id=bundle_id_of(parse_bundle(v1).manifest_envelope),
            device_ids=fleet.device_ids,
            from_bundle_id=bundle_id_of(parse_bundle(v2).manifest_envelope),
        )
        t0 = time.monotonic()
        result = pub.rollback(fleet.device_ids, order, keys.keyring_envelope()).wait(args.timeout)
        steps.append(_step("signed rollback to v1", result, time.monotonic() - t0))
        ok = ok and result.in_state(DeliveryState.ROLLED_BACK) == sorted(fleet.device_ids)

    summary = {"agents": args.agents, "model": args.model, "ok": ok, "steps": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'OK' if ok else 'FAILED'}: summary written to {args.out}; broker and agents stopped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
