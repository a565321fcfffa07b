"""The soak's faults, injected into a running `pdserve up` from outside, as an operator or the
kernel would: signals to the workers the local actuator started (their pids are labels in
/admin/pools) and the admin API's live profile switch.

- `sigkill` / `sigterm`: SIGKILL to a worker's process group (a lost node), or SIGTERM to the
  worker (its own shutdown path). The pool sees the replica die and starts a replacement.
- `hang`: SIGSTOP to the worker's group for a while, then SIGCONT: it accepts connections (the
  kernel's backlog) but answers nothing, health probes included.
- `slow`: SIGSTOP/SIGCONT in a duty cycle (stopped 70 ms of every 100 ms) for a while: every
  step takes about 3x as long.
- `refuse`: the simulated worker's run-time refusal (pdserve/workers/sim/refuse.py: SIGUSR1
  closes its listening socket, SIGUSR2 reopens it); vLLM has no such switch, so on vLLM it is
  skipped and the report says so.
- `switch`: PUT /admin/profile with a variant of the running profile, later `switch_back`.
Every fault that pauses or closes something is undone before the soak ends (`restore_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from pdserve.workers.sim.refuse import ACCEPT_SIGNAL, REFUSE_SIGNAL

SLOW_STOPPED_S = 0.07
SLOW_PERIOD_S = 0.1

SCHEDULE = (
    ("sigkill", "prefill"),
    ("hang", "decode"),
    ("switch", ""),
    ("sigterm", "decode"),
    ("slow", "prefill"),
    ("refuse", "decode"),
    ("sigterm", "prefill"),
    ("switch_back", ""),
    ("slow", "decode"),
    ("sigkill", "decode"),
    ("hang", "prefill"),
    ("refuse", "prefill"),
)
"""One cycle of the fault schedule: (action, role of the pool it hits)."""


@dataclass
class Fault:
    at_s: float
    action: str
    role: str
    target: str = ""  # replica id
    result: str = "injected"  # injected | skipped: why
    detail: str = ""


@dataclass(frozen=True)
class Target:
    pool: str
    replica: str
    pid: int
    url: str


def ready_targets(pools: dict[str, Any], role: str) -> list[Target]:
    """The ready replicas (with a pid label) of every pool whose role is `role`."""
    found = []
    for name, pool in pools.items():
        if pool.get("role") != role:
            continue
        for endpoint in pool.get("endpoints", []):
            pid = endpoint.get("labels", {}).get("pid")
            if endpoint.get("state") == "ready" and pid:
                found.append(Target(name, endpoint["id"], int(pid), endpoint["url"]))
    return found


def variant(profile: dict[str, Any], engine: str) -> dict[str, Any]:
    """The profile to switch to: a lower prefill threshold and, on simulated workers, a prefill
    pool whose launch spec changed (a new generation of prefill workers replaces the old)."""
    changed = copy.deepcopy(profile)
    changed["name"] = f"{profile['name']}-soak-variant"
    routing = changed.setdefault("routing", {})
    routing["prefill_threshold"] = int(routing.get("prefill_threshold", 512) * 3 // 4)
    if engine == "sim":
        for pool in changed.get("pools", {}).values():
            if pool.get("role") == "prefill":
                faults = pool.setdefault("sim_faults", {})
                faults["cold_start_s"] = float(faults.get("cold_start_s") or 0) + 1.0
    return changed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class Injector:
    """Injects faults into one running stack; remembers how to undo the lasting ones."""

    client: httpx.AsyncClient  # on the gateway, with admin headers
    engine: str
    original_profile: dict[str, Any]
    hold_s: float  # how long a hang, slow or refusal lasts
    started: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    _undo: dict[str, Callable[[], None]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def pools(self) -> dict[str, Any]:
        response = await self.client.get("/admin/pools")
        response.raise_for_status()
        pools: dict[str, Any] = response.json()
        return pools

    async def inject(self, action: str, role: str) -> Fault:
        fault = Fault(round(time.monotonic() - self.started, 2), action, role)
        self.faults.append(fault)
        try:
            await self._inject(fault)
        except (httpx.HTTPError, ValueError) as exc:
            fault.result = f"skipped: {type(exc).__name__} {exc}"
        return fault

    async def _inject(self, fault: Fault) -> None:
        if fault.action in ("switch", "switch_back"):
            await self._switch(fault)
            return
        targets = ready_targets(await self.pools(), fault.role)
        if not targets:
            fault.result = f"skipped: no ready {fault.role} replica"
            return
        if fault.action == "refuse" and self.engine != "sim":
            fault.result = "skipped: vLLM has no run-time refusal (sim only)"
            return
        target = targets[int(fault.at_s * 1000) % len(targets)]
        fault.target = target.replica
        actions: dict[str, Callable[[Target], Awaitable[None]]] = {
            "sigkill": self._kill,
            "sigterm": self._term,
            "hang": self._hang,
            "slow": self._slow,
            "refuse": self._refuse,
        }
        await actions[fault.action](target)

    async def _kill(self, target: Target) -> None:
        _signal_group(target.pid, signal.SIGKILL)

    async def _term(self, target: Target) -> None:
        _signal(target.pid, signal.SIGTERM)

    def _for_a_while(self, key: str, undo: Callable[[], None], body: Awaitable[None]) -> None:
        self._undo[key] = undo

        async def run() -> None:
            try:
                await body
            finally:
                self._undo.pop(key, None)
                undo()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hang(self, target: Target) -> None:
        _signal_group(target.pid, signal.SIGSTOP)
        resume = lambda: _signal_group(target.pid, signal.SIGCONT)  # noqa: E731
        self._for_a_while(f"hang-{target.pid}", resume, asyncio.sleep(self.hold_s))

    async def _slow(self, target: Target) -> None:
        async def cycle() -> None:
            end = time.monotonic() + self.hold_s
            while time.monotonic() < end:
                _signal_group(target.pid, signal.SIGSTOP)
                await asyncio.sleep(SLOW_STOPPED_S)
                _signal_group(target.pid, signal.SIGCONT)
                await asyncio.sleep(SLOW_PERIOD_S - SLOW_STOPPED_S)

        resume = lambda: _signal_group(target.pid, signal.SIGCONT)  # noqa: E731
        self._for_a_while(f"slow-{target.pid}", resume, cycle())

    async def _refuse(self, target: Target) -> None:
        _signal(target.pid, REFUSE_SIGNAL)
        accept = lambda: _signal(target.pid, ACCEPT_SIGNAL)  # noqa: E731
        self._for_a_while(f"refuse-{target.pid}", accept, asyncio.sleep(self.hold_s))

    async def _switch(self, fault: Fault) -> None:
        back = fault.action == "switch_back"
        body = self.original_profile if back else variant(self.original_profile, self.engine)
        response = await self.client.put("/admin/profile", json={"profile": body})
        fault.target = body["name"]
        if response.status_code != 202:
            fault.result = f"skipped: {response.status_code} {response.text[:200]}"

    async def restore_all(self, switch_timeout_s: float) -> None:
        """Undo every pause and refusal now, and end on the original profile."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for undo in list(self._undo.values()):
            undo()
        self._undo.clear()
        deadline = time.monotonic() + switch_timeout_s
        while time.monotonic() < deadline:
            state = (await self.client.get("/admin/profile")).json()
            if state["pending"] is None and state["active"] == self.original_profile["name"]:
                return
            if state["pending"] is None:
                await self.client.put("/admin/profile", json={"profile": self.original_profile})
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the original profile is not back within {switch_timeout_s:g} s")

    def report(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.faults]
