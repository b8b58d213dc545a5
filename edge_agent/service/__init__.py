"""Installing the agent on a device: enrollment, identity, config, systemd, status."""

from edge_agent.service.installer import InstallOptions, InstallReport, install, uninstall
from edge_agent.service.layout import SERVICE_NAME, InstallLayout

__all__ = [
    "SERVICE_NAME",
    "InstallLayout",
    "InstallOptions",
    "InstallReport",
    "install",
    "uninstall",
]
