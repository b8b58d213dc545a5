"""Fleet simulations: hundreds of real edge agents against the real hub, with faults.

``run_scenario(load_scenario(path), out_dir)`` runs one scenario from
``simulations/fleet/scenarios/*.toml`` (or ``cloud-hub fleet-sim SCENARIO``): see
:mod:`simulations.fleet.runner` for the phases and :mod:`simulations.fleet.invariants` for
what each run must hold.
"""

from simulations.fleet.runner import FleetResult, run_scenario
from simulations.fleet.scenario import FleetScenario, ScenarioError, load_scenario

__all__ = ["FleetResult", "FleetScenario", "ScenarioError", "load_scenario", "run_scenario"]
