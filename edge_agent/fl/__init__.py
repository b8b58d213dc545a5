"""The agent's part of federated training: its Flower ClientApp and a supervised SuperNode.

- :mod:`edge_agent.fl.train_command` — the answer to a ``TrainCommand``: verify the signed
  training order (R4), then start a SuperNode on the device's samples.
- :mod:`edge_agent.fl.client_app` — ``app``, the ClientApp a SuperNode runs (trains on the
  device's local samples; SecAgg+ with fedfleet's hardened masks; refuses rounds the order
  does not cover).
- :mod:`edge_agent.fl.supernode` — :class:`SuperNodeConfig` / :class:`SuperNodeSupervisor`:
  start, watch and restart ``flower-supernode``.
- :mod:`edge_agent.fl.pinned_supernode` — the SuperNode entry point that runs only the FAB
  the signed order names.
- :mod:`edge_agent.fl.inprocess_clientapp` — the SuperNode runs each message's ClientApp in
  its own process (the default; :mod:`edge_agent.fl.warm_clientapp` forks a task process
  per message instead).

Only :mod:`edge_agent.fl.supernode` is imported here: it needs neither torch nor Flower.
"""

from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor

__all__ = ["SuperNodeConfig", "SuperNodeSupervisor"]
