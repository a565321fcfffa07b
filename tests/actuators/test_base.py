"""LaunchingActuator, the scale and close of the local and Ray actuators, over a subclass that
launches and stops replicas in memory: which replicas go, in what order, and how many start;
and the profile they (and the static actuator) read after `follow`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pdserve.actuators.base import LaunchingActuator
from pdserve.actuators.static import StaticActuator
from pdserve.profile import Profile

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Launched:
    id: str
    started_at: float


class InMemory(LaunchingActuator[Launched]):
    def __init__(self) -> None:
        super().__init__(lambda: Profile.model_validate({"name": "first"}))
        self.launched: list[str] = []
        self.stopped: list[str] = []
        self.stopping = 0
        self.most_stopping = 0  # how many stops ran at once

    async def _launch(self, pool: str) -> Launched:
        replica = Launched(f"{pool}-{len(self.launched) + 1}", float(len(self.launched)))
        self.launched.append(replica.id)
        return replica

    async def _stop(self, replica: Launched) -> None:
        self.stopping += 1
        self.most_stopping = max(self.most_stopping, self.stopping)
        await asyncio.sleep(0)
        self.stopping -= 1
        self.stopped.append(replica.id)


async def test_grows_to_desired_and_shrinks_newest_first() -> None:
    actuator = InMemory()
    await actuator.scale("decode", 3, [])
    assert actuator.launched == ["decode-1", "decode-2", "decode-3"]
    await actuator.scale("decode", 1, [])
    # over by two, no victims named: the two launched last go, the oldest stays
    assert actuator.stopped == ["decode-3", "decode-2"]
    assert list(actuator._replicas["decode"]) == ["decode-1"]


async def test_victims_go_first_then_the_pool_is_refilled() -> None:
    actuator = InMemory()
    await actuator.scale("prefill", 3, [])
    await actuator.scale("prefill", 2, ["prefill-1", "prefill-2", "gone"])
    # both victims stop together (an unknown id is skipped); 1 left < 2 desired: one more starts
    assert sorted(actuator.stopped) == ["prefill-1", "prefill-2"] and actuator.most_stopping == 2
    assert actuator.launched[-1] == "prefill-4"
    assert sorted(actuator._replicas["prefill"]) == ["prefill-3", "prefill-4"]


async def test_stop_all_stops_every_pool_together() -> None:
    actuator = InMemory()
    await actuator.scale("prefill", 1, [])
    await actuator.scale("decode", 2, [])
    await actuator.stop_all()
    assert sorted(actuator.stopped) == ["decode-2", "decode-3", "prefill-1"]
    assert actuator.most_stopping == 3 and actuator._replicas == {}


async def test_follow_hands_the_profile_read_from_then_on() -> None:
    def static(name: str, url: str) -> Profile:
        endpoints = {"decode": [url]}
        actuator = {"kind": "static", "static": {"endpoints": endpoints}}
        body = {"actuator": actuator, "pools": {"decode": {"role": "both"}}}
        return Profile.model_validate({"name": name, "routing": {"mode": "standard"}, **body})

    first, pending = static("first", "http://10.0.0.1:8000"), static("next", "http://10.0.0.2:8000")
    actuator = StaticActuator(lambda: first)
    assert [r.url for r in await actuator.replicas("decode")] == ["http://10.0.0.1:8000"]
    actuator.follow(lambda: pending)
    assert [r.url for r in await actuator.replicas("decode")] == ["http://10.0.0.2:8000"]
    launching = InMemory()
    launching.follow(lambda: pending)
    assert launching._profile().name == "next"
