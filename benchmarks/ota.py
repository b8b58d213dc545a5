"""OTA delivery benchmark: fedfleet's signed, verified, installed delivery vs raw broker fan-out.

In one run, through the same Mosquitto (a private one on a free loopback port unless
``--mqtt-url`` is given) and with the same chunk frames:

1. **raw**: one plain paho client publishes every chunk frame of the bundle once (QoS 1) to a
   topic that N plain paho subscribers (QoS 1) receive; time from the first publish until
   every subscriber has all bytes → ``raw_mb_s`` (bundle MB / seconds): the broker's ceiling,
   against which ``goodput_ratio`` is measured.
1b. **raw + write**: the same, but each subscriber also writes every message it receives into
   its own preallocated file (``os.pwrite``, no sync) — the least any receiver that keeps the
   bytes must do → ``raw_write_mb_s`` and each fleet's ``goodput_ratio_vs_raw_write`` (shown
   beside the headline ratio, not instead of it).
2. **ours**: ``FleetPublisher.deploy`` offers the same bundle to N real agents (the
   ``edge_agent.agent.EdgeAgent`` class: MQTT link with on-disk outbox, persisted install state
   machine, chunk files, signature/hash verification, A/B install, ONNX smoke inference,
   commit). The offer and the agents' ``download_started`` answers come first (the hub
   publishes chunks once every agent is subscribed: ``offer_handshake_s``); from then until
   every agent has every byte written to its download file is the transfer →
   ``goodput_mb_s`` and ``goodput_ratio``: the same span as raw's, first chunk out to last
   byte in, so it ends when the last agent had its last byte written, by its own clock (the
   ``ts`` of its ``download_complete`` report, stamped where that write happened: the agent's
   network thread, as raw's subscribers stamp ``done_at`` in their message callback, not
   when the agent's worker got to verify it; the machine's clock, as raw's).
   ``transfer_hub_s`` and ``goodput_ratio_hub_observed`` end when the hub *read* the last
   of those reports instead: they add the agent's worker taking the download on, and the
   report's way through the agent's durable outbox (a synced SQLite commit,
   queued here behind 50 agents' writes to one disk) and the broker, which raw's
   subscribers do not report at all. ``first_downloaded_s``: the first agent's last byte
   (the spread up to ``transfer_s`` is the fleet's tail). ``end_to_end_ratio`` counts the
   offer and handshake too; ``time_to_all_committed_s`` runs until every agent committed.

"ours" runs twice per round, side by side with the same raw figure, on two fleets:
**durable** with the product's default (``fsync_chunks``: the download is synced once, at
its commit point before the install) and
**none** (``fsync_chunks = false``: the download is never synced). Both fsync the installed
slot and the state records (those are not optional); the commit point lies after
``download_complete``, so its cost shows in ``time_to_all_committed_s`` of each fleet
(``durable_vs_none``). The two fleets take turns going first.

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
import shutil
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
    files: dict[str, int] = {}  # --write-dir: each subscriber's file, written at its end
    written = dict.fromkeys(ids, 0)  # each touched only by its subscriber's network thread
    for sid in ids:
        if args.write_dir:
            fd = os.open(Path(args.write_dir) / f"{sid}.bin", os.O_RDWR | os.O_CREAT, 0o644)
            os.posix_fallocate(fd, 0, args.expect)  # as an agent preallocates its download
            files[sid] = fd

        def on_message(c: Any, u: Any, msg: Any, sid: str = sid) -> None:
            if files:
                os.pwrite(files[sid], msg.payload, written[sid])
                written[sid] += len(msg.payload)
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
    for fd in files.values():
        os.close(fd)


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
            limits=AgentLimits(fsync_chunks=False) if args.no_fsync else AgentLimits(),
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
def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 where /proc is not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the workers have used so far (Linux /proc)."""
        return sum(process_cpu_s(p.pid) for p in self.procs)

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


def measure_raw(
    frames: list[bytes], n: int, procs: int, port: int, prefix: str, write_dir: Path | None = None
) -> tuple[float, float]:
    """Seconds from the first publish until N plain subscribers have every byte (and, with
    ``write_dir``, have written every message into a file of their own there), and the CPU
    seconds the subscribers' processes used meanwhile."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"{prefix}/v1/raw/chunks"
    total = sum(len(f) for f in frames)
    ids = [f"s{i:03d}" for i in range(n)]
    extra = ["--port", str(port), "--prefix", prefix, "--topic", topic, "--expect", str(total)]
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
        extra += ["--write-dir", str(write_dir)]
    with Workers("raw", split(ids, procs), extra) as w:
        w.expect("READY", 60)
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(32)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        cpu0 = w.cpu_s()
        t0 = time.time()
        infos = [pub.publish(topic, f, qos=1) for f in frames]
        for info in infos:
            info.wait_for_publish(120)
        reports = [json.loads(x) for x in w.expect("DONE", 300)]
        cpu_s = w.cpu_s() - cpu0
        pub.disconnect()
        pub.loop_stop()
    done = [t for r in reports for t in r["done_at"].values()]
    if len(done) != n:
        raise RuntimeError(f"only {len(done)}/{n} raw subscribers got every byte")
    return max(done) - t0, cpu_s


class OursFleet:
    """The hub (FleetPublisher) and N EdgeAgents in worker processes, kept across rounds."""

    def __init__(
        self,
        keys: Any,
        n: int,
        procs: int,
        port: int,
        prefix: str,
        chunk_size: int,
        work: Path,
        durable: bool,
    ) -> None:
        from cloud_hub.delivery import FleetPublisher, PublisherConfig
        from shared.broker_endpoint import BrokerEndpoint

        self.name = "durable" if durable else "none"
        trust = work / "trust_root.json"
        trust.write_text(json.dumps(keys.trust_root().to_dict()))
        self.ids = [f"{self.name}-{i:03d}" for i in range(n)]
        extra = [
            "--port",
            str(port),
            "--prefix",
            prefix,
            "--root",
            str(work / "agents"),
            "--trust",
            str(trust),
        ] + ([] if durable else ["--no-fsync"])
        cfg = PublisherConfig(
            broker=BrokerEndpoint(port=port), prefix=prefix, chunk_size=chunk_size, start_grace_s=30
        )
        self.stack = contextlib.ExitStack()
        self.pub = self.stack.enter_context(FleetPublisher(cfg))
        workers = self.stack.enter_context(Workers("agents", split(self.ids, procs), extra))
        workers.expect("READY", 120)
        self.workers = workers
        missing = self.pub.wait_for_devices(self.ids, timeout=60)
        if missing:
            self.stack.close()
            raise RuntimeError(f"agents never announced themselves: {missing[:5]}")

    def round(self, bundle: bytes) -> dict[str, float]:
        cpu0 = self.workers.cpu_s()
        samples: list[tuple[float, float]] = []  # (monotonic time, workers' CPU seconds)
        sampling = threading.Event()
        sampler = threading.Thread(target=self._sample_cpu, args=(samples, sampling))
        sampler.start()
        t0 = time.monotonic()
        try:
            dep = self.pub.deploy(bundle, self.ids)
            published = time.monotonic() - t0
            result = dep.wait(timeout=600)
        finally:
            sampling.set()
            sampler.join()
        cpu_s = self.workers.cpu_s() - cpu0
        if not result.all_committed:
            raise RuntimeError(f"not all agents committed: {result.summary()}")
        devices = list(result.devices.values())
        # the hub publishes the first chunk once the last device reported download_started
        fanout_start = max(p.first_seen or t0 for p in devices)
        # when each device had its last byte written, by its own clock (the machine's, as
        # raw's subscribers' done_at), on the hub's monotonic clock
        wall_minus_mono = time.time() - time.monotonic()
        done = [(p.downloaded_ts or float("inf")) - wall_minus_mono for p in devices]
        return {
            "transfer_s": max(done) - fanout_start,
            "transfer_hub_s": max(p.downloaded_at or float("inf") for p in devices) - fanout_start,
            "first_downloaded_s": min(done) - fanout_start,
            "download_s": max(done) - t0,
            "committed_s": max(p.finished or float("inf") for p in devices) - t0,
            "publish_s": published,
            "handshake_s": max(p.first_seen or t0 for p in devices) - t0,
            "repairs": float(result.repairs_sent),
            "cpu_s": cpu_s,
            "transfer_cpu_s": cpu_at(samples, max(done)) - cpu_at(samples, fanout_start),
            "chunks": float(result.chunks_published),
        }

    def _sample_cpu(self, samples: list[tuple[float, float]], stop: threading.Event) -> None:
        while True:
            samples.append((time.monotonic(), self.workers.cpu_s()))
            if stop.wait(0.02):
                return

    def close(self) -> None:
        self.stack.close()


def cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """The CPU seconds sampled at ``when``, interpolated between the samples around it."""
    before = [s for s in samples if s[0] <= when] or samples[:1]
    after = [s for s in samples if s[0] >= when] or samples[-1:]
    (ta, ca), (tb, cb) = before[-1], after[0]
    return ca if tb <= ta else ca + (cb - ca) * (when - ta) / (tb - ta)


def make_keys(work: Path) -> Any:
    from cloud_hub.keys import KeyStore

    return KeyStore.init(work / "hub")


def build_bundle(keys: Any, mb: float, version: int) -> bytes:
    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from cloud_hub.bundles.sample import export_onnx, preprocess_json
    from shared.bundle import artifact_info

    model, pre = export_onnx("sensor-mlp", seed=version), preprocess_json("sensor-mlp")
    pad = os.urandom(max(0, int(mb * 1e6) - len(model) - len(pre)))
    arts = [
        (artifact_info("model.onnx", model, "model", "application/onnx"), model),
        (artifact_info("preprocess.json", pre, "preprocess", "application/json"), pre),
        (artifact_info("payload.bin", pad, "other"), pad),
    ]
    spec = BundleSpec(model_name="sensor-mlp", device_class="x86-cpu", version=version)
    return build_signed_bundle(keys, default_store(keys), spec, arts).data


def cpu_info() -> dict[str, Any]:
    from shared.device_facts import detect_device_facts

    facts = detect_device_facts()
    return {"model": facts.cpu_model, "flags": facts.isa_flags, "cores": os.cpu_count()}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


FLEETS = ("durable", "none")


def fleet_figures(
    raw_times: list[float], raw_write_times: list[float], rounds: list[dict[str, float]], mb: float
) -> dict[str, Any]:
    """One fleet's figures against the raw fan-out (and raw + write) measured in the same
    rounds."""
    raw_mb_s = mb / median(raw_times)
    goodput = mb / median([o["transfer_s"] for o in rounds])
    return {
        "goodput_mb_s": round(goodput, 3),
        "goodput_ratio": round(goodput / raw_mb_s, 3),
        "goodput_ratio_vs_raw_write": round(goodput * median(raw_write_times) / mb, 3),
        "goodput_ratio_hub_observed": round(
            median(raw_times) / median([o["transfer_hub_s"] for o in rounds]), 3
        ),
        "transfer_hub_s": round(median([o["transfer_hub_s"] for o in rounds]), 3),
        "first_downloaded_s": round(median([o["first_downloaded_s"] for o in rounds]), 3),
        "paired_ratios": [
            round(r / o["transfer_s"], 3) for r, o in zip(raw_times, rounds, strict=True)
        ],
        "end_to_end_ratio": round(mb / median([o["download_s"] for o in rounds]) / raw_mb_s, 3),
        "offer_handshake_s": round(median([o["handshake_s"] for o in rounds]), 3),
        "transfer_s": round(median([o["transfer_s"] for o in rounds]), 3),
        "time_to_all_downloaded_s": round(median([o["download_s"] for o in rounds]), 3),
        "time_to_all_committed_s": round(median([o["committed_s"] for o in rounds]), 3),
        "repairs": int(sum(o["repairs"] for o in rounds)),
        "round_cpu_s": round(median([o["cpu_s"] for o in rounds]), 2),
        "transfer_cpu_s": round(median([o["transfer_cpu_s"] for o in rounds]), 2),
    }


def run_rounds(
    args: argparse.Namespace, keys: Any, port: int, prefix: str, chunk_size: int, work: Path
) -> tuple[
    list[float], list[float], dict[str, list[dict[str, float]]], float, dict[str, list[float]]
]:
    """Each round: raw fan-out, raw + write, then both fleets (taking turns going first)."""
    from shared.bundle import bundle_id_of, parse_bundle
    from shared.chunks import encode_chunk, split_chunks

    procs = max(1, min(args.procs, args.agents))
    raw_times: list[float] = []
    raw_write_times: list[float] = []
    raw_cpu: dict[str, list[float]] = {"raw": [], "raw_write": []}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in FLEETS}
    bundle_mb = 0.0
    with contextlib.ExitStack() as stack:
        fleets = {
            name: OursFleet(
                keys,
                args.agents,
                procs,
                port,
                f"{prefix}-{name}",
                chunk_size,
                work,
                name == "durable",
            )
            for name in FLEETS
        }
        for fleet in fleets.values():
            stack.callback(fleet.close)
        for r in range(args.repeat):
            bundle = build_bundle(keys, args.bundle_mb, version=r + 1)
            bundle_mb = len(bundle) / 1e6
            bundle_id = bundle_id_of(parse_bundle(bundle).manifest_envelope)
            frames = [encode_chunk(c) for c in split_chunks(bundle_id, bundle, chunk_size)]
            if r == 0:
                print(
                    f"bundle {bundle_mb:.2f} MB in {len(frames)} chunks of {chunk_size} B; "
                    f"{args.agents} receivers in {procs} processes per side; "
                    f"{args.repeat} round(s); load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            raw_s, cpu = measure_raw(frames, args.agents, procs, port, f"{prefix}-r{r}")
            raw_cpu["raw"].append(cpu)
            raw_times.append(raw_s)
            sink = work / "raw-write"
            raw_write_s, cpu = measure_raw(frames, args.agents, procs, port, f"{prefix}-w{r}", sink)
            raw_cpu["raw_write"].append(cpu)
            shutil.rmtree(sink)
            raw_write_times.append(raw_write_s)
            line = (
                f"round {r + 1}: raw {bundle_mb / raw_s:6.2f} MB/s ({raw_s:.2f} s, cpu "
                f"{raw_cpu['raw'][-1]:.1f} s), raw+write {bundle_mb / raw_write_s:6.2f} MB/s "
                f"(cpu {raw_cpu['raw_write'][-1]:.1f} s)"
            )
            for name in FLEETS if r % 2 == 0 else FLEETS[::-1]:
                ours = fleets[name].round(bundle)
                rounds[name].append(ours)
                line += (
                    f" | {name} {bundle_mb / ours['transfer_s']:6.2f} MB/s (ratio "
                    f"{raw_s / ours['transfer_s']:.2f}, hub saw {raw_s / ours['transfer_hub_s']:.2f}, "
                    f"first done {ours['first_downloaded_s']:.2f} s, "
                    f"committed {ours['committed_s']:.2f} s, cpu {ours['transfer_cpu_s']:.1f} s "
                    f"in transfer, {ours['cpu_s']:.1f} s in all, "
                    f"{int(ours['repairs'])} repairs)"
                )
            print(line + f" | load {os.getloadavg()[0]:.1f}", flush=True)
    return raw_times, raw_write_times, rounds, bundle_mb, raw_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--bundle-mb", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=5, help="worker processes per side")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (raw then ours); medians")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--mqtt-url", default=None, help="external broker (default: a private one)")
    ap.add_argument(
        "--state-dir",
        default=None,
        help="where agents keep their state (default: the system temp dir, i.e. the disk all "
        "agents share here; /dev/shm models devices that each have their own storage)",
    )
    ap.add_argument("--quick", action="store_true", help="10 agents, 5 MB, 1 round (< 60 s)")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["raw", "agents"], help=argparse.SUPPRESS)
    ap.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--write-dir", help=argparse.SUPPRESS)
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

    from cloud_hub.config import parse_mqtt_url
    from shared.chunks import DEFAULT_CHUNK_SIZE
    from shared.messages import new_id
    from simulations.harness.mosquitto import LocalMosquitto

    if args.quick:
        args.agents, args.bundle_mb = min(args.agents, 10), min(args.bundle_mb, 5.0)
        args.repeat = 1
    chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    load_before = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="fedfleet-bench-ota-", dir=args.state_dir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        if args.mqtt_url:
            port = parse_mqtt_url(args.mqtt_url).port
        else:
            port = stack.enter_context(LocalMosquitto()).port
        prefix = f"bench-{new_id()[:8]}"
        raw_times, raw_write_times, rounds, bundle_mb, raw_cpu = run_rounds(
            args, make_keys(work), port, prefix, chunk_size, work
        )
    raw_mb_s = bundle_mb / median(raw_times)
    figures = {
        name: fleet_figures(raw_times, raw_write_times, rounds[name], bundle_mb) for name in FLEETS
    }
    raw_write_mb_s = bundle_mb / median(raw_write_times)
    durable, none = figures["durable"], figures["none"]
    print(f"raw fan-out : {raw_mb_s:.2f} MB/s per subscriber, median of {len(raw_times)}")
    print(f"raw + write : {raw_write_mb_s:.2f} MB/s per subscriber (each writes its file)")
    for name, f in figures.items():
        print(
            f"{name:<8}    : {f['goodput_mb_s']:.2f} MB/s per agent, ratio "
            f"{f['goodput_ratio']:.2f} (target >= 0.8; {f['goodput_ratio_vs_raw_write']:.2f} of "
            f"raw + write), all committed after "
            f"{f['time_to_all_committed_s']:.2f} s"
        )
    print(
        json.dumps(
            {
                "agents": args.agents,
                "bundle_mb": round(bundle_mb, 3),
                "chunk_size": chunk_size,
                "procs": max(1, min(args.procs, args.agents)),
                "rounds": len(raw_times),
                "agents_as": "EdgeAgent threads in worker processes",
                "fsync_chunks": True,  # the product default; the "none" fleet turns it off
                "state_dir": args.state_dir or tempfile.gettempdir(),
                "raw_mb_s": round(raw_mb_s, 3),
                "raw_time_s": round(median(raw_times), 3),
                "raw_write_mb_s": round(raw_write_mb_s, 3),
                "raw_write_time_s": round(median(raw_write_times), 3),
                # CPU seconds of the receivers' processes (less sensitive to a loaded
                # machine than the times): raw's and raw + write's from first publish to
                # last byte; a fleet's transfer_cpu_s over its transfer_s (sampled every
                # 20 ms), its round_cpu_s from the offer until all committed
                "raw_cpu_s": round(median(raw_cpu["raw"]), 2),
                "raw_write_cpu_s": round(median(raw_cpu["raw_write"]), 2),
                **durable,
                "none": none,
                "durable_vs_none": {
                    "goodput": round(durable["goodput_mb_s"] / none["goodput_mb_s"], 3),
                    "time_to_all_committed": round(
                        durable["time_to_all_committed_s"] / none["time_to_all_committed_s"], 3
                    ),
                },
                "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "cpu": cpu_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
