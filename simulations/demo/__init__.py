"""The closed-loop demo (``cloud-hub demo``): train, roll out, drift, retrain, roll out.

- :mod:`.runner` — :func:`~.runner.run_demo`, the demo as numbered steps;
- :mod:`.fleet` — the demo's device processes and the data they see;
- :mod:`.report` — the summary table, bytes shipped and plots.
"""
