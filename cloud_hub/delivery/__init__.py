"""Delivery of signed bundles and commands to the fleet over MQTT v5 (paho-mqtt 2.x)."""

from cloud_hub.delivery.config import PublisherConfig
from cloud_hub.delivery.devices import DeviceDirectory, HeardDevices, KnownDevice, RegistryDevices
from cloud_hub.delivery.handle import Deployment
from cloud_hub.delivery.progress import (
    TERMINAL_STATES,
    DeliveryState,
    DeploymentResult,
    DeviceProgress,
    advance,
    plan_repair,
)
from cloud_hub.delivery.publisher import FleetPublisher

__all__ = [
    "TERMINAL_STATES",
    "DeliveryState",
    "Deployment",
    "DeploymentResult",
    "DeviceDirectory",
    "DeviceProgress",
    "FleetPublisher",
    "HeardDevices",
    "KnownDevice",
    "PublisherConfig",
    "RegistryDevices",
    "advance",
    "plan_repair",
]
