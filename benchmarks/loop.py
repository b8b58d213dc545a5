"""The closed loop, smaller: drift at one site → federated retraining → staged rollout.

One run of :func:`simulations.demo.runner.run_demo` (embedded Mosquitto, in-process hub, real
device processes, Flower with SecAgg+, real compression, signed bundles, staged rollouts).
Side by side in that run: accuracy on the drifted devices' data before the drift, under the
drift with the old model, and after the retrained model reached them; bytes of full bundles
vs the delta bundles built for the same versions.

Last output line: one JSON object with ``accuracy_before_drift``, ``accuracy_after_drift``,
``accuracy_after_retrain``, ``accuracy_recovered_pts``, ``bytes_shipped`` (hub → broker,
full bundles), ``delta_to_full_ratio``, ``drift_to_recovered_s``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulations.demo.report import summary_table
from simulations.demo.runner import DemoConfig, run_demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 devices, 2 rounds (< 60 s)")
    p.add_argument("--out", type=Path, help="keep the outputs here (default: a temp folder)")
    args = p.parse_args()
    import flwr.common.logger  # noqa: F401 - configures the "flwr" logger; quiet it after

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fedfleet-bench-loop-") as tmp:
        config = DemoConfig(
            out_dir=args.out or Path(tmp),
            agents=4 if args.quick else 6,
            drifted=3,
            steps_before_drift=3 if args.quick else 6,
            steps_after_retrain=3 if args.quick else 6,
            drift_window=100 if args.quick else 200,
            num_rounds=2 if args.quick else 3,
            rollout_stages=({"count": 1}, {"percent": 100.0})
            if args.quick
            else DemoConfig.rollout_stages,
            gate_window_s=1.0 if args.quick else 2.0,
            plots=args.out is not None,
        )
        s = run_demo(config).summary
    print(summary_table(s))
    b = s["bytes"]
    result = {
        "accuracy_before_drift": round(s["accuracy_before_drift"], 4),
        "accuracy_after_drift": round(s["accuracy_after_drift"], 4),
        "accuracy_after_retrain": round(s["accuracy_after_retrain"], 4),
        "accuracy_recovered_pts": round(s["accuracy_recovered_pts"], 2),
        "bytes_shipped": b["full_bytes_shipped"],
        # what devices really downloaded (deltas where they ran the base) vs full bundles
        "device_bytes_shipped": b.get("device_bytes_shipped"),
        "device_bytes_if_full": b["full_bytes_received_by_devices"],
        "delta_to_full_ratio": round(
            (b.get("device_bytes_shipped") or b["delta_bytes_if_devices_took_deltas"])
            / max(1, b["full_bytes_received_by_devices"]),
            4,
        ),
        "drift_to_recovered_s": round(s["drift_to_recovered_s"], 1),
        "wall_s": round(s["wall_s"], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
