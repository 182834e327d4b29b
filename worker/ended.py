"""What became of a job in one attempt: a typed value, named only at the edges.

Inside a worker an attempt's end travels as an `Ended`; its name (``str(ended)``) is what the
logs' ``outcome`` field, the task result Flower shows and `Delivery.run` give::

    delivered               sent and accepted
    retry_in_1.2s           failed, may heal: back in the retry schedule in 1.2 s
    held:paused             the account's token was refused (or its circuit is open):
    held:circuit_open         kept with its attempts until resume or the circuit closes
    dead:<reason>           dead-lettered (`producers.errors` lists the reasons)
    skipped:<why>           this message had no claim on the job (gone, stale, busy), the
                              attempt was taken over, or Redis failed mid-attempt
    deferred                given back to the schedule for its rate-limit turn, attempt not counted

Counters group retries whatever their delay (`Ended.counted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.policy import DeadLetter, Decision, Delivered, Pause, Retry

State = Literal["delivered", "retry", "held", "dead", "skipped", "deferred"]


@dataclass(frozen=True, slots=True)
class Ended:
    state: State
    reason: str = ""
    """Why, for ``held``, ``dead`` and ``skipped``."""
    delay_s: float = 0.0
    """For ``retry``: when the next attempt is due."""

    def __str__(self) -> str:
        if self.state == "retry":
            return f"retry_in_{self.delay_s:.1f}s"
        return f"{self.state}:{self.reason}" if self.reason else self.state

    @property
    def counted(self) -> str:
        """The name it is counted under: retries are one count, whatever their delay."""
        return "retry" if self.state == "retry" else str(self)

    @classmethod
    def of(cls, decision: Decision) -> Ended:
        """The end a retry policy decision stands for."""
        if isinstance(decision, Delivered):
            return DELIVERED
        if isinstance(decision, Retry):
            return cls("retry", delay_s=decision.delay_s)
        if isinstance(decision, Pause):
            return cls("held", decision.reason)
        assert isinstance(decision, DeadLetter)
        return cls("dead", decision.reason)


DELIVERED = Ended("delivered")
DEFERRED = Ended("deferred")


def skipped(why: str) -> Ended:
    return Ended("skipped", why)


def dead(reason: str) -> Ended:
    return Ended("dead", reason)
