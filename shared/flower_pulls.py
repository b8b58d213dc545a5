"""Flower's object pulls retried after a short pause instead of Flower's 1 s.

Flower 1.41 moves a message in two steps: the message (its object tree) first, then its
objects. A reader that sees the message before its objects arrived retries each missing
object after ``PULL_INITIAL_BACKOFF`` = 1 s, doubling up to 10 s
(``flwr.supercore.inflatable.inflatable_utils``). That is the common case on the Deployment
Engine, not an exception: a SuperNode stores a message before pulling its objects from the
SuperLink, and its SuperExec hands the task to a ClientApp at once, which then finds the
objects missing; the ServerApp likewise sees a reply before the SuperNode pushed its
objects. Measured: the ClientApp's pull took 1.2-1.3 s of a 1.7 s SecAgg+ setup task.

:func:`retry_object_pulls_sooner` changes the defaults of Flower's two pull functions in
this process (and in processes forked from it): first retry after ``initial_s`` (0.05 s),
then doubling up to ``cap_s`` (2 s). Flower's attempt limit per object (500) and its total
limit (2 h) stay as they are.
"""

from __future__ import annotations

__all__ = ["INITIAL_RETRY_S", "MAX_RETRY_S", "retry_object_pulls_sooner"]

INITIAL_RETRY_S = 0.05
MAX_RETRY_S = 2.0


def retry_object_pulls_sooner(
    initial_s: float = INITIAL_RETRY_S, cap_s: float = MAX_RETRY_S
) -> None:
    """Make Flower's object pulls in this process retry after ``initial_s`` seconds."""
    from flwr.supercore.inflatable import inflatable_utils

    if not 0 < initial_s <= cap_s:
        raise ValueError(f"need 0 < initial_s <= cap_s, got {initial_s}, {cap_s}")
    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        defaults = function.__kwdefaults__
        if not defaults or "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            raise RuntimeError(f"Flower's {function.__name__} has no backoff to shorten")
        defaults["initial_backoff"] = initial_s
        defaults["backoff_cap"] = cap_s
