"""The closed loop: drift-triggered federated retraining feeding staged rollouts.

- :mod:`.policy` — when to retrain (pure): drift / accuracy / schedule / manual triggers,
  cooldown and daily budget;
- :mod:`.health` — the registry's view of a device class as the policy's ``ClassHealth``;
- :mod:`.pipeline` — one retraining run: Flower + SecAgg+ → candidate → champion comparison
  → compression → signed full + delta bundles → registry → canary rollout, all recorded;
- :mod:`.controller` — ticks the policy per class, runs the pipeline, approvals;
- :mod:`.cohort` — where a cohort's training data comes from (and why the demo uses the
  in-process engine rather than Flower's Deployment Engine);
- :mod:`.device_training` — a cohort trained on the devices through Flower's Deployment Engine.

The one-command demo that drives this loop on one machine lives in ``simulations.demo``.

Nothing is imported here: the submodules pull in torch/Flower only where they need them.
"""
