"""The simulated worker's CPU timing fitted to a running vLLM worker on this machine
(`pdserve fit-sim --url URL -o FILE`, then `pdserve worker --engine sim --timing FILE`).

1. The probe measures the real worker; `fit.fit_cpu` solves the CPU's effective parameters.
2. A simulated worker started with that fit is measured the same way. What it adds on top of
   the modelled overheads (its own HTTP, event-loop wake-ups) is the sim's serving cost on this
   machine, and is taken off the fitted overheads, so the sim does not pay it twice.
"""

from __future__ import annotations

import dataclasses
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from pdserve.workers.sim import fit, probe, roofline
from pdserve.workers.sim.launch import SimFleet


@dataclass(frozen=True)
class Calibration:
    fit: fit.TimingFit  # the timing to start simulated workers with
    real: probe.Measurements
    sim_own_step_s: float  # what the sim adds to each modelled step here
    sim_own_request_s: float  # ... and to each request

    def note(self) -> str:
        return (
            f"fitted on {platform.node()} ({_cpu_name()}) to {self.fit.observations} "
            f"measurements; the sim's own cost here: {self.sim_own_step_s * 1e3:.2f} ms a step, "
            f"{self.sim_own_request_s * 1e3:.2f} ms a request (taken off the overheads)"
        )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def served_model(url: str) -> str:
    """The first model a worker serves (`GET /v1/models`)."""
    models = httpx.get(f"{url}/v1/models", timeout=30).json()
    return str(models["data"][0]["id"])


def write_timing(timing: fit.TimingFit, path: Path, note: str = "") -> Path:
    """A timing YAML for `--timing FILE` (or a profile's `engine.sim_timing`)."""
    path.write_text(yaml.safe_dump(timing.to_yaml_data(note=note), sort_keys=False))
    return path


def _sim_fit(timing: fit.TimingFit, model_name: str, cost: roofline.ModelCost) -> fit.TimingFit:
    """The fit of a simulated worker started with `timing`, measured as the real one was."""
    with tempfile.TemporaryDirectory(prefix="pdserve-fit-") as tmp, SimFleet() as fleet:
        path = write_timing(timing, Path(tmp) / "timing.yaml")
        url = fleet.start("both", flags=["--timing", str(path), "--served-model-name", model_name])
        return fit.fit_cpu(probe.measure(url, model_name).observations, cost)


def calibrate(
    url: str, model_name: str | None = None, cost: roofline.ModelCost = roofline.TINY
) -> Calibration:
    """Measure the worker at `url` (alone on its cores: nothing else should load it), fit the
    CPU timing, and correct the overheads by the sim's own cost on this machine."""
    model_name = model_name or served_model(url)
    real = probe.measure(url, model_name)
    first = fit.fit_cpu(real.observations, cost)
    echo = _sim_fit(first, model_name, cost)
    own_step, own_request = _own_cost(first, echo, fit.medians(real.observations))
    acc = first.accelerator
    corrected = dataclasses.replace(
        first,
        accelerator=dataclasses.replace(
            acc, step_overhead_s=max(0.0, acc.step_overhead_s - own_step)
        ),
        request_overhead_s=max(0.0, first.request_overhead_s - own_request),
    )
    return Calibration(corrected, real, own_step, own_request)


def _own_cost(
    first: fit.TimingFit, echo: fit.TimingFit, steps: list[fit.Observation]
) -> tuple[float, float]:
    """(per step, per request) that the sim timed by `first` added, as `echo` saw it: compared
    over the measured steps, not parameter by parameter (the split between bandwidth and fixed
    overhead of a tiny model's decode is loose; what a step takes is not)."""

    def extra(kind: str) -> float:
        chosen = [o for o in steps if o.kind == kind]
        return sum(fit.predict(echo, o) - fit.predict(first, o) for o in chosen) / len(chosen)

    own_step = extra("itl")
    return own_step, extra("ttft") - own_step


def run_fit(url: str, output: str, model_name: str | None, cost: str) -> int:
    """`pdserve fit-sim`: calibrate against `url`, write the timing file, say what was fitted."""
    calibration = calibrate(url, model_name, roofline.model_cost(cost))
    path = write_timing(calibration.fit, Path(output), calibration.note())
    acc = calibration.fit.accelerator
    print(f"real worker: {calibration.real.summary()}")
    print(
        f"fit: {acc.flops / 1e9:.1f} GFLOP/s, {acc.mem_bw / 1e9:.1f} GB/s, step overhead "
        f"{acc.step_overhead_s * 1e3:.2f} ms, per sequence "
        f"{calibration.fit.seq_overhead_s * 1e3:.3f} ms, request overhead "
        f"{calibration.fit.request_overhead_s * 1e3:.2f} ms "
        f"(rms error {calibration.fit.rms_relative_error:.1%})"
    )
    print(f"wrote {path}: start simulated workers with --timing {path}")
    return 0
