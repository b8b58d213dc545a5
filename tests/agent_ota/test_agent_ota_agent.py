"""EdgeAgent in-process against real Mosquitto: the plug-in points other packages use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from edge_agent.ota import InstalledSlot
from shared.messages import (
    EventKind,
    Hello,
    PingCommand,
    Status,
    TrainCommand,
    decode_message,
)
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    broker_available,
    make_authority,
    make_bundle,
    make_offer,
    unique_prefix,
    wait_for,
    write_agent_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]


def test_plugin_points_and_retained_status(tmp_path: Path) -> None:
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    hub = BundleSender(topics)
    cfg = write_agent_config(
        tmp_path,
        device_id="plug-dev",
        prefix=prefix,
        trust_path=auth.write_trust(tmp_path / "trust.json"),
    )
    agent = EdgeAgent(load_config(cfg), runtimes=["onnxruntime:CPUExecutionProvider", "tflite"])
    changes: list[InstalledSlot | None] = []
    trains: list[TrainCommand] = []
    agent.on_model_changed(changes.append)
    agent.add_command_handler(TrainCommand, trains.append)
    agent.add_status_fields(lambda: {"runtime": "onnxruntime", "provider": "CPUExecutionProvider"})
    agent.start()
    try:
        assert changes == [None]  # told once at start: no model yet
        assert wait_for(lambda: hub.of("plug-dev", Hello), 15)
        assert hub.of("plug-dev", Hello)[0].runtimes == [
            "onnxruntime:CPUExecutionProvider",
            "tflite",
        ]

        offer = make_offer(make_bundle(auth, version=4), topics, chunk_size=512)
        hub.deploy(offer, ["plug-dev"])
        assert hub.wait_kind("plug-dev", offer.command.deployment_id, EventKind.COMMITTED, 20)
        assert wait_for(lambda: len(changes) == 2, 5)
        slot = changes[-1]
        assert slot is not None and slot.meta.version == 4 and slot.model_path is not None
        assert slot.model_path.read_bytes()[:2]  # the installed ONNX file is there

        hub.send(
            "plug-dev", TrainCommand(command_id="t1", run_id="r1", superlink="x:1", model_name="m")
        )
        assert wait_for(lambda: [t.run_id for t in trains] == ["r1"], 5)
        hellos = len(hub.of("plug-dev", Hello))
        hub.send("plug-dev", PingCommand(command_id="p1"))
        assert wait_for(lambda: len(hub.of("plug-dev", Hello)) > hellos, 5)
        status = hub.of("plug-dev", Status)[-1]
        assert status.runtime == "onnxruntime" and status.provider == "CPUExecutionProvider"
        assert status.installed is not None and status.installed.version == 4

        # a late subscriber gets the retained status
        got: list[Any] = []
        ready = threading.Event()
        late = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(c: Any, u: Any, msg: Any) -> None:
            got.append(decode_message(msg.payload))
            ready.set()

        late.on_message = on_message
        late.connect("127.0.0.1", 1883)
        late.subscribe(topics.device("plug-dev", "status"), qos=1)
        late.loop_start()
        assert ready.wait(5)
        late.loop_stop()
        late.disconnect()
        assert isinstance(got[0], Status) and got[0].online and got[0].ota_state == "committed"
        agent.stop()  # a clean stop reports offline itself
        assert wait_for(lambda: not hub.of("plug-dev", Status)[-1].online, 5)
    finally:
        if agent.link.connected:
            agent.stop()
        hub.close()
