"""OTA delivery benchmark: fedfleet's signed, verified, installed delivery vs raw broker fan-out.

In one run, through the same Mosquitto (a private one on a free loopback port unless
``--mqtt-url`` is given) and with the same chunk frames:

1. **raw**: one plain paho client publishes every chunk frame of the bundle once (QoS 1) to a
   topic that N plain paho subscribers (QoS 1) receive; time until every subscriber has all
   bytes → ``raw_mb_s`` (bundle MB / seconds).
2. **ours**: ``FleetPublisher.deploy`` offers the same bundle to N real agents (the
   ``edge_agent.agent.EdgeAgent`` class: MQTT link with on-disk outbox, persisted install state
   machine, chunk files, signature/hash verification, A/B install, ONNX smoke inference,
   commit); time until every agent reported ``download_complete`` → ``goodput_mb_s``, and until
   every agent committed → ``time_to_all_committed_s``.

Both sides use the same process layout: ``--procs`` worker processes, each hosting N/procs
agents (as threads: every agent is a full ``EdgeAgent`` with its own MQTT connection, state
directory and threads) or N/procs raw subscribers. 50 agent *processes* would each import
onnxruntime and numpy; on 2 cores that measures the scheduler, not the delivery.

The bundle is a real ONNX model plus an incompressible random artifact making up the size.
The last output line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------- workers
def _wait_stdin_eof() -> None:
    """Workers live until the parent closes their stdin (or dies): nothing is left behind."""
    with contextlib.suppress(Exception):
        sys.stdin.read()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker_raw(args: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ids = args.ids.split(",")
    done_at: dict[str, float] = {}
    received = dict.fromkeys(ids, 0)
    lock = threading.Lock()
    subscribed = threading.Semaphore(0)
    all_done = threading.Event()
    clients = []
    for sid in ids:

        def on_message(c: Any, u: Any, msg: Any, sid: str = sid) -> None:
            with lock:
                received[sid] += len(msg.payload)
                if received[sid] >= args.expect and sid not in done_at:
                    done_at[sid] = time.time()
                    if len(done_at) == len(ids):
                        all_done.set()

        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"raw-{args.prefix}-{sid}",
            protocol=mqtt.MQTTv5,
        )
        c.on_message = on_message
        c.on_subscribe = lambda *a: subscribed.release()
        c.connect("127.0.0.1", args.port)
        c.subscribe(args.topic, qos=1)
        c.loop_start()
        clients.append(c)
    for _ in ids:
        subscribed.acquire(timeout=30)
    _say("READY")
    all_done.wait(args.timeout)
    _say("DONE " + json.dumps({"done_at": done_at, "received": received}))
    _wait_stdin_eof()
    for c in clients:
        c.disconnect()
        c.loop_stop()


def worker_agents(args: argparse.Namespace) -> None:
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import AgentConfig, AgentLimits, MqttSettings, OtaTimeouts

    agents = []
    for device_id in args.ids.split(","):
        config = AgentConfig(
            device_id=device_id,
            device_class="x86-cpu",
            state_dir=Path(args.root) / device_id,
            trust_root=Path(args.trust),
            mqtt=MqttSettings(port=args.port, topic_prefix=args.prefix),
            timeouts=OtaTimeouts(chunk_retry_s=2.0),
            limits=AgentLimits(fsync_chunks=not args.no_fsync),
            status_interval_s=600,
        )
        agent = EdgeAgent(config, runtimes=["onnxruntime:CPUExecutionProvider"])
        agent.start()
        agents.append(agent)
    deadline = time.monotonic() + 60
    while not all(a.link.connected for a in agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    _say("READY")
    _wait_stdin_eof()
    for a in agents:
        a.stop(drain_s=0.5)


# ---------------------------------------------------------------------------------- parent
class Workers:
    """K worker subprocesses of one kind; closed (stdin EOF, then terminate) on exit."""

    def __init__(self, kind: str, groups: list[list[str]], extra: list[str]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", kind, "--ids", ",".join(g), *extra],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for g in groups
            if g
        ]

    def expect(self, word: str, timeout: float) -> list[str]:
        lines = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()  # workers only print protocol lines
            if not line.startswith(word):
                raise RuntimeError(f"worker said {line!r}, expected {word}")
            lines.append(line[len(word) :].strip())
        return lines

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split(ids: list[str], k: int) -> list[list[str]]:
    return [ids[i::k] for i in range(k)]


def measure_raw(frames: list[bytes], n: int, procs: int, port: int, prefix: str) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"{prefix}/v1/raw/chunks"
    total = sum(len(f) for f in frames)
    ids = [f"s{i:03d}" for i in range(n)]
    extra = ["--port", str(port), "--prefix", prefix, "--topic", topic, "--expect", str(total)]
    with Workers("raw", split(ids, procs), extra) as w:
        w.expect("READY", 60)
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(32)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        t0 = time.time()
        infos = [pub.publish(topic, f, qos=1) for f in frames]
        for info in infos:
            info.wait_for_publish(120)
        reports = [json.loads(x) for x in w.expect("DONE", 300)]
        pub.disconnect()
        pub.loop_stop()
    done = [t for r in reports for t in r["done_at"].values()]
    if len(done) != n:
        raise RuntimeError(f"only {len(done)}/{n} raw subscribers got every byte")
    return max(done) - t0


def measure_ours(
    bundle: bytes,
    keys: Any,
    n: int,
    procs: int,
    port: int,
    prefix: str,
    chunk_size: int,
    work: Path,
    no_fsync: bool,
) -> dict[str, float]:
    from cloud_hub.delivery import FleetPublisher, PublisherConfig

    trust = work / "trust_root.json"
    trust.write_text(json.dumps(keys.trust_root().to_dict()))
    ids = [f"agent-{i:03d}" for i in range(n)]
    extra = [
        "--port",
        str(port),
        "--prefix",
        prefix,
        "--root",
        str(work / "agents"),
        "--trust",
        str(trust),
    ] + (["--no-fsync"] if no_fsync else [])
    cfg = PublisherConfig(port=port, prefix=prefix, chunk_size=chunk_size, start_grace_s=30)
    with FleetPublisher(cfg) as pub, Workers("agents", split(ids, procs), extra) as w:
        w.expect("READY", 120)
        missing = pub.wait_for_devices(ids, timeout=60)
        if missing:
            raise RuntimeError(f"agents never announced themselves: {missing[:5]}")
        t0 = time.monotonic()
        dep = pub.deploy(bundle, ids)
        published = time.monotonic() - t0
        result = dep.wait(timeout=600)
    if not result.all_committed:
        raise RuntimeError(f"not all agents committed: {result.summary()}")
    downloaded = [p.downloaded_at for p in result.devices.values() if p.downloaded_at]
    finished = [p.finished for p in result.devices.values() if p.finished]
    return {
        "download_s": max(downloaded) - t0 if len(downloaded) == n else float("nan"),
        "committed_s": max(finished) - t0,
        "publish_s": published,
        "handshake_s": max(p.first_seen or t0 for p in result.devices.values()) - t0,
        "repairs": float(result.repairs_sent),
        "chunks": float(result.chunks_published),
    }


def build_bundle(work: Path, mb: float) -> tuple[Any, bytes]:
    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from cloud_hub.bundles.sample import export_onnx, preprocess_json
    from cloud_hub.keys import KeyStore
    from shared.bundle import artifact_info

    keys = KeyStore.init(work / "hub")
    model, pre = export_onnx("sensor-mlp"), preprocess_json("sensor-mlp")
    pad = os.urandom(max(0, int(mb * 1e6) - len(model) - len(pre)))
    arts = [
        (artifact_info("model.onnx", model, "model", "application/onnx"), model),
        (artifact_info("preprocess.json", pre, "preprocess", "application/json"), pre),
        (artifact_info("payload.bin", pad, "other"), pad),
    ]
    spec = BundleSpec(model_name="sensor-mlp", device_class="x86-cpu", version=1)
    return keys, build_signed_bundle(keys, default_store(keys), spec, arts).data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--bundle-mb", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=5, help="worker processes per side")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--mqtt-url", default=None, help="external broker (default: a private one)")
    ap.add_argument("--no-fsync", action="store_true", help="agents skip fdatasync per chunk")
    ap.add_argument("--quick", action="store_true", help="10 agents, 5 MB (< 60 s)")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["raw", "agents"], help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--trust", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=300, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "raw":
        return worker_raw(args)
    if args.worker == "agents":
        import logging

        logging.basicConfig(level=logging.ERROR)
        return worker_agents(args)

    from cloud_hub.delivery.config import parse_mqtt_url
    from cloud_hub.delivery.local_broker import LocalMosquitto
    from shared.bundle import bundle_id_of, parse_bundle
    from shared.chunks import DEFAULT_CHUNK_SIZE, encode_chunk, split_chunks
    from shared.messages import new_id

    if args.quick:
        args.agents, args.bundle_mb = min(args.agents, 10), min(args.bundle_mb, 5.0)
    chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    procs = max(1, min(args.procs, args.agents))
    with (
        tempfile.TemporaryDirectory(prefix="fedfleet-bench-ota-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        if args.mqtt_url:
            _host, port, _tls = parse_mqtt_url(args.mqtt_url)
            broker = "external " + args.mqtt_url
        else:
            port = stack.enter_context(LocalMosquitto()).port
            broker = f"private mosquitto on 127.0.0.1:{port}"
        keys, bundle = build_bundle(work, args.bundle_mb)
        bundle_mb = len(bundle) / 1e6
        bundle_id = bundle_id_of(parse_bundle(bundle).manifest_envelope)
        frames = [encode_chunk(c) for c in split_chunks(bundle_id, bundle, chunk_size)]
        print(
            f"bundle {bundle_mb:.2f} MB in {len(frames)} chunks of {chunk_size} B; "
            f"{args.agents} receivers in {procs} processes; {broker}",
            flush=True,
        )
        prefix = f"bench-{new_id()[:8]}"
        raw_s = measure_raw(frames, args.agents, procs, port, prefix)
        raw_mb_s = bundle_mb / raw_s
        print(
            f"raw fan-out  : every subscriber had all bytes after {raw_s:.2f} s "
            f"→ {raw_mb_s:.1f} MB/s per receiver ({raw_mb_s * args.agents:.0f} MB/s total)",
            flush=True,
        )
        ours = measure_ours(
            bundle, keys, args.agents, procs, port, prefix, chunk_size, work, args.no_fsync
        )
    goodput = bundle_mb / ours["download_s"]
    ratio = goodput / raw_mb_s
    print(
        f"fedfleet OTA : every agent downloaded after {ours['download_s']:.2f} s "
        f"→ {goodput:.1f} MB/s per agent ({goodput * args.agents:.0f} MB/s total); "
        f"all committed after {ours['committed_s']:.2f} s; "
        f"{int(ours['chunks'])} chunks published once, {int(ours['repairs'])} repairs; "
        f"all agents subscribed after {ours['handshake_s']:.2f} s, "
        f"deploy() returned after {ours['publish_s']:.2f} s"
    )
    print(f"goodput ratio ours/raw = {ratio:.2f} (target >= 0.8)")
    print(
        json.dumps(
            {
                "agents": args.agents,
                "bundle_mb": round(bundle_mb, 3),
                "chunk_size": chunk_size,
                "procs": procs,
                "agents_as": "EdgeAgent threads in worker processes",
                "fsync_chunks": not args.no_fsync,
                "goodput_mb_s": round(goodput, 3),
                "raw_mb_s": round(raw_mb_s, 3),
                "goodput_ratio": round(ratio, 3),
                "time_to_all_downloaded_s": round(ours["download_s"], 3),
                "time_to_all_committed_s": round(ours["committed_s"], 3),
                "raw_time_s": round(raw_s, 3),
                "repairs": int(ours["repairs"]),
                "handshake_s": round(ours["handshake_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
