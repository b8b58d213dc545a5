"""Deleting a device takes effect at the broker: the Mosquitto dynamic security plugin.

Mosquitto 2.0 cannot refuse a connected client because its certificate was revoked: the
CRL is read at the TLS handshake, and only again after SIGHUP or a restart, both of which
need the broker host. The dynamic security plugin (``mosquitto_dynamic_security.so``) is
changed at run time over MQTT (``$CONTROL/dynamic-security/v1``) and every change to a
client kicks its connections. So the device listener loads the plugin, and the hub, as a
dedicated admin identity, revokes a deleted device there:

- ``deleteClient`` + ``createClient``: the device's user name gets exactly the role
  :data:`REVOKED_ROLE`, which denies it every publish, every delivery and every
  subscription. The plugin is asked first on the device listener, so a reconnect (its
  certificate still passes the handshake until the broker reloads the CRL) gets no rights;
- ``disableClient``: drops the connection it holds now;
- re-enrolling the id (``deleteClient``) readmits it: the listener's ACL file rules apply again.

Why this design holds:

- devices never reach the control topic: the plugin grants ``$CONTROL`` to no one by default
  and the device ACL file has no rule for it; only :data:`ADMIN_ROLE` may publish there or
  read the answers, and only the admin user has it;
- the admin user is :func:`broker_admin_user` (``HUB:broker-admin``): a ``:`` that no device
  id may contain, so no certificate the enrollment issues can carry that name; its
  certificate comes from the device CA (the plugin lives on the device listener, and with
  ``per_listener_settings`` a plugin, its control topic and its ACL belong to one listener)
  and its key never leaves the hub's data directory;
- every other client of the device listener is unknown to the plugin, which then defers to
  the listener's ACL file: devices keep exactly the rights the ACL file gives them.

This module is pure: the plugin's initial configuration, the commands and the check of the
answers. :mod:`.broker_admin` sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_hub.errors import HubError
from shared.topics import validate_device_id

__all__ = [
    "ADMIN_ROLE",
    "CONTROL_TOPIC",
    "DYNSEC_PLUGIN_CANDIDATES",
    "RESPONSE_TOPIC",
    "REVOKED_ROLE",
    "BrokerAdminError",
    "DynsecCommand",
    "broker_admin_user",
    "check_responses",
    "control_payload",
    "readmit_commands",
    "render_dynsec_config",
    "revoke_commands",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ADMIN_ROLE = "fedfleet-broker-admin"
REVOKED_ROLE = "fedfleet-revoked"
ADMIN_SUFFIX = ":broker-admin"
# Where distributions install the plugin (Debian/Ubuntu, the eclipse-mosquitto image, RPM).
DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribePattern")


class BrokerAdminError(HubError):
    """The broker did not confirm a change of its access control."""


def broker_admin_user(hub_user: str) -> str:
    """The admin identity of the hub whose MQTT identity is ``hub_user``."""
    validate_device_id(hub_user)
    return hub_user + ADMIN_SUFFIX


def _acl(acltype: str, topic: str, *, allow: bool, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": allow}


def _roles() -> list[dict[str, Any]]:
    admin = [_acl(t, "$CONTROL/dynamic-security/#", allow=True, priority=1) for t in _ACL_TYPES]
    admin += [_acl(t, "#", allow=False) for t in _ACL_TYPES]  # nothing else
    return [
        {"rolename": ADMIN_ROLE, "textname": "the hub: changes the broker's access control",
         "acls": admin},
        {"rolename": REVOKED_ROLE, "textname": "deleted devices: no rights at all",
         "acls": [_acl(t, "#", allow=False) for t in _ACL_TYPES]},
    ]  # fmt: skip


def _revoked_client(device_id: str) -> dict[str, Any]:
    return {
        "username": validate_device_id(device_id),
        "textname": "deleted by the fleet operator",
        "disabled": True,
        "roles": [{"rolename": REVOKED_ROLE}],
    }


def render_dynsec_config(admin_user: str, revoked: Iterable[str] = ()) -> str:
    """The plugin's configuration file (``plugin_opt_config_file``): the two roles, the admin
    client and the devices deleted so far (so a new broker setup starts with them)."""
    clients = [{"username": admin_user, "roles": [{"rolename": ADMIN_ROLE}]}]
    clients += [_revoked_client(d) for d in sorted(set(revoked))]
    config = {
        # the plugin decides only for its own clients' matching rules; everyone else falls
        # through to the listener's ACL file (and $CONTROL never falls through)
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": _roles(),
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class DynsecCommand:
    """One command and the errors that still mean the wanted state was reached."""

    body: Mapping[str, Any]
    tolerated: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return str(self.body["command"])


def revoke_commands(device_id: str) -> list[DynsecCommand]:
    """Give ``device_id`` no rights and drop its connections (idempotent: the client is
    made afresh, so a client of that name changed by hand does not keep other roles)."""
    user = validate_device_id(device_id)
    return [
        DynsecCommand({"command": "deleteClient", "username": user}, tolerated=("Client not found",)),
        DynsecCommand(
            {"command": "createClient", "username": user, "textname": "deleted device",
             "roles": [{"rolename": REVOKED_ROLE}]}
        ),
        DynsecCommand({"command": "disableClient", "username": user}),
    ]  # fmt: skip


def readmit_commands(device_id: str) -> list[DynsecCommand]:
    """Forget ``device_id`` at the plugin: the listener's ACL file applies again."""
    user = validate_device_id(device_id)
    return [
        DynsecCommand(
            {"command": "deleteClient", "username": user}, tolerated=("Client not found",)
        )
    ]


def control_payload(commands: Sequence[DynsecCommand], correlation: str) -> bytes:
    """The message for :data:`CONTROL_TOPIC`; each command carries ``correlation:index``."""
    return json.dumps(
        {
            "commands": [
                {**c.body, "correlationData": f"{correlation}:{i}"} for i, c in enumerate(commands)
            ]
        }
    ).encode()


def check_responses(
    commands: Sequence[DynsecCommand], correlation: str, responses: Iterable[Mapping[str, Any]]
) -> bool:
    """Whether ``responses`` (from :data:`RESPONSE_TOPIC`) answer every command of ours; an
    error that is not tolerated raises :class:`BrokerAdminError`."""
    answered = {}
    for response in responses:
        tag = response.get("correlationData")
        if isinstance(tag, str) and tag.startswith(correlation + ":"):
            answered[tag] = response
    if len(answered) < len(commands):
        return False
    for i, command in enumerate(commands):
        error = answered[f"{correlation}:{i}"].get("error")
        if error and error not in command.tolerated:
            raise BrokerAdminError(f"broker refused {command.name}: {error}")
    return True
