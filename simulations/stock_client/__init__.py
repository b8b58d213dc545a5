"""A stock Flower ``NumPyClient`` (written as Flower's documentation shows, not fedfleet's
ClientApp) and the Flower Apps that point the hub's ServerApp at it.

- :mod:`simulations.stock_client.client_app`: ``app`` (plain FedAvg) and ``secagg_app``
  (Flower's ``secaggplus_mod``, as in Flower's SecAgg+ example).
- ``fab_plain`` / ``fab_secagg``: Flower Apps whose ServerApp is the hub's
  (``cloud_hub.fl.superlink_app:app``) and whose ClientApp is one of the two above.

A stock client joins a plain run and trains. In a SecAgg+ run it masks with Flower's own
mask generator, not the one the run config names (``mask-generator``): it cannot read that
key, so it cannot refuse; the hub's sanity check of the unmasked aggregate fails the round
and the run instead, and no candidate model is saved.
"""

from pathlib import Path

FAB_PLAIN = Path(__file__).resolve().parent / "fab_plain"
FAB_SECAGG = Path(__file__).resolve().parent / "fab_secagg"

__all__ = ["FAB_PLAIN", "FAB_SECAGG"]
