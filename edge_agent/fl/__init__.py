"""The agent's part of federated training: its Flower ClientApp and a supervised SuperNode.

- :mod:`edge_agent.fl.client_app` — ``app``, the ClientApp a SuperNode runs (trains on the
  device's local samples; SecAgg+ with fedfleet's hardened masks).
- :mod:`edge_agent.fl.supernode` — :class:`SuperNodeConfig` / :class:`SuperNodeSupervisor`:
  start, watch and restart ``flower-supernode``.

Only :mod:`edge_agent.fl.supernode` is imported here: it needs neither torch nor Flower.
"""

from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor

__all__ = ["SuperNodeConfig", "SuperNodeSupervisor"]
