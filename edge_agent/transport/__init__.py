"""The agent's MQTT transport: a paho-mqtt v5 link and the on-disk outbox behind it."""

from edge_agent.transport.mqtt import InboundMessage, MqttLink
from edge_agent.transport.outbox import Outbox, OutboxEntry

__all__ = ["InboundMessage", "MqttLink", "Outbox", "OutboxEntry"]
