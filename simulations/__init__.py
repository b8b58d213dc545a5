"""The local harness and simulations: everything that runs the product on one machine.

It sits on top of the three product packages (``cloud_hub``, ``edge_agent``, ``shared``) and
may import any of them; none of them imports it. ``cloud-hub demo`` and ``cloud-hub
fleet-sim`` reach it through the ``cloud_hub.commands`` entry point (see ``pyproject.toml``).

- :mod:`.harness` — a private Mosquitto (or amqtt) on loopback and local agent processes;
- :mod:`.demo` — the one-command closed-loop demo (``cloud-hub demo``, ``benchmarks/loop.py``);
- :mod:`.fleet` — fleet simulations with faults (``cloud-hub fleet-sim``);
- :mod:`.commands` — the two ``cloud-hub`` subcommands above;
- ``ota_demo.py`` — a scripted OTA walk-through; ``*.toml`` — Flower simulation scenarios
  for ``cloud-hub simulate``.
"""
