"""The closed loop: drift-triggered federated retraining feeding staged rollouts.

- :mod:`.policy` — when to retrain (pure): drift / accuracy / schedule / manual triggers,
  cooldown and daily budget;
- :mod:`.health` — the registry's view of a device class as the policy's ``ClassHealth``;
- :mod:`.controller` — ticks the policy per class, runs the pipeline, approvals;
  :mod:`.serving` — the controller ``cloud-hub serve`` runs;
- :mod:`.pipeline` — one retraining run, step by step and recorded: training →
  :mod:`.champion` (the candidate against the champion) → :mod:`.release` (compression,
  signed full + delta bundles, registry, canary rollout);
- :mod:`.cohort_training` — who trains and the synchronous paths; :mod:`.async_training` —
  the asynchronous (buffered) paths; :mod:`.cohort` — where an in-process cohort's data
  comes from (simulations and tests);
- :mod:`.device_training` — a cohort trained on the devices through Flower's Deployment
  Engine (the product's path);
- :mod:`.run_states` — a training run's lifecycle (transition table).

The one-command demo that drives this loop on one machine lives in ``simulations.demo``.

Nothing is imported here: the submodules pull in torch/Flower only where they need them.
"""
