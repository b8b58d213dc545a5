"""A state machine's transition table as data: ``(state, event) → next``, nothing else.

Every lifecycle in the product (rollouts, rollout targets, training runs, the agent's
install) is one of these tables; this type gives them one way to be read. It is a read-only
mapping, so a table can be compared with its drawing or walked like a dict, plus the three
questions the code asks of it: the next state (refusing what the table does not list), the
states an event leaves from, and the one state it leads to.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["TransitionTable"]

StateT = TypeVar("StateT", bound=enum.Enum)
EventT = TypeVar("EventT", bound=enum.Enum)
NextT = TypeVar("NextT")


class TransitionTable(Mapping[tuple[StateT, EventT], NextT], Generic[StateT, EventT, NextT]):
    """The transitions of ``subject`` (e.g. ``"a rollout target"``); anything not listed is
    refused with ``refusal(message)``."""

    def __init__(
        self,
        subject: str,
        moves: Mapping[tuple[StateT, EventT], NextT],
        refusal: Callable[[str], Exception] = ValueError,
    ) -> None:
        self.subject = subject
        self._moves = dict(moves)
        self._refusal = refusal

    def __getitem__(self, key: tuple[StateT, EventT]) -> NextT:
        return self._moves[key]

    def __iter__(self) -> Iterator[tuple[StateT, EventT]]:
        return iter(self._moves)

    def __len__(self) -> int:
        return len(self._moves)

    def next(self, state: StateT, event: EventT) -> NextT:
        """Where ``event`` leads from ``state``; refused where the table has no entry."""
        nxt = self._moves.get((state, event))
        if nxt is None:
            raise self._refusal(
                f"{event.value!r} not allowed for {self.subject} in state {state.value!r}"
            )
        return nxt

    def sources(self, event: EventT) -> list[StateT]:
        """The states ``event`` leaves from (sorted by name)."""
        return sorted({s for s, e in self._moves if e is event}, key=lambda s: str(s.value))

    def target(self, event: EventT) -> NextT:
        """The one state ``event`` leads to; ``ValueError`` if it leads to several."""
        targets = {nxt for (_, e), nxt in self._moves.items() if e is event}
        if len(targets) != 1:
            raise ValueError(f"{event.value!r} leads {self.subject} to {len(targets)} states")
        return targets.pop()
