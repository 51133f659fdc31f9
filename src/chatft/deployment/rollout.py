"""The blue/green rollout, one procedure for the local target and the Azure ML target.

1. if the slot taking traffic already serves this model version (and ``force`` is off), smoke-test it and stop:
   nothing is created or restarted;
2. otherwise prepare the endpoint (locally: the traffic map; on Azure: create or update the endpoint under its stable
   name, its live traffic kept as it is), deploy the version as the slot taking no traffic (``blue`` or ``green``)
   and smoke-test that slot;
3. a failed start or smoke test removes the new slot, leaves traffic where it was and fails with the reason; a passed
   one moves 100% of traffic to the new slot (locally, then smoke-tested through the router too), then retires the
   old slot.

A target says how each step is done (``Target``); the caller passes the smoke test, which gets a ``Probe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chatft.errors import ChatftError

SLOTS = ("blue", "green")


class DeployError(ChatftError, RuntimeError):
    """The deployment failed or cannot start; the message says what, where and what to do."""


@dataclass
class Probe:
    """Where a smoke request goes: ``send(request) -> (status, body, answering slot or None)``; ``where`` names it.

    With ``deployment`` set, that slot must be the one that answered (a request through the local router)."""

    send: Callable[[dict], tuple[int, str, str | None]]
    where: str
    deployment: str | None = None


SmokeTest = Callable[[Probe], list[str]]


class Target(Protocol):
    """One endpoint to roll one model version out to. ``traffic`` is the live routing table (slot -> percent)."""

    traffic: dict[str, int]
    failures: tuple[type[BaseException], ...]  # what a failed start or smoke test raises: rolled back, reported
    removed: str  # how the rollback message says the new slot went ("removed", "deleted")
    clean_up_always: bool  # also remove the new slot on any other exception (an interrupt)

    def live(self) -> str | None: ...
    def serves(self, slot: str) -> bool: ...
    def keep(self, slot: str) -> Probe: ...
    def prepare(self, slot: str) -> None: ...
    def start(self, slot: str) -> Probe: ...
    def failure(self, err: BaseException, slot: str) -> str: ...
    def remove(self, slot: str) -> None: ...
    def route(self, slot: str) -> Probe | None: ...
    def unroute(self, slot: str) -> None: ...
    def retire(self, slot: str, previous: str | None) -> None: ...
    def summary(self, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict: ...


def roll_out(target: Target, smoke_test: SmokeTest, force: bool = False) -> dict:
    """Deploy the target's model version blue/green (the steps in the module docstring); endpoint_info's fields."""
    live = target.live()
    if live and not force and target.serves(live):
        return target.summary(live, None, True, smoke_test(target.keep(live)))

    new = next(slot for slot in SLOTS if slot != live)
    target.prepare(new)
    try:
        outputs = smoke_test(target.start(new))
    except BaseException as err:
        failed = isinstance(err, target.failures)
        if failed or target.clean_up_always:
            target.remove(new)
        if not failed:
            raise
        kept = f"traffic stays {target.traffic}" if target.traffic else "no traffic was routed"
        rolled_back = f"rolled back: deployment {new} {target.removed}; {kept}"
        raise DeployError(f"{target.failure(err, new)}\n{rolled_back}") from None

    through = target.route(new)
    if through is not None:
        try:
            outputs += smoke_test(through)
        except DeployError as err:
            target.unroute(new)
            raise DeployError(f"{err}\nrolled back: traffic restored to {target.traffic}, {new} removed") from None
    target.retire(new, live)
    return target.summary(new, live, False, outputs)
