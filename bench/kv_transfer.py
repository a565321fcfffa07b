"""KV transfer bandwidth: raw NIXL (UCX) READ between two processes vs a plain memcpy, and
vLLM's own per-request `vllm:nixl_xfer_time_seconds` from a prefill/decode pair.

    python bench/kv_transfer.py --quick                   # raw NIXL, 1..256 MiB, < 2 min
    python bench/kv_transfer.py                           # raw NIXL, 1..512 MiB
    python bench/kv_transfer.py --vllm                    # + a P/D pair started here
    python bench/kv_transfer.py --vllm --prefill-url URL --decode-url URL   # a running pair
    python bench/kv_transfer.py --vllm --skip-raw --model smollm2 --out run.json  # real model

`--model` (default tiny) is served by the pair; prompt lengths are that model's tokens (token-id
prompts cut from English text with its tokenizer; tiny's byte-level one: random characters).

The raw part registers torch tensors in DRAM (or VRAM with --device cuda), lets a second
process READ them over NIXL, and times a memcpy of the same bytes in the same run. The ratio
(NIXL GB/s / memcpy GB/s) is the number to watch: the target is >= 0.7 at >= 64 MiB on CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from pdserve.processes import free_port, stop_tree
from pdserve.workers.sim.launch import wait_healthy

MiB = 1 << 20


@dataclass(frozen=True)
class RawResult:
    size_bytes: int
    nixl_s: float  # median seconds per READ
    memcpy_s: float  # median seconds per copy of the same bytes

    @property
    def nixl_gbps(self) -> float:
        return self.size_bytes / self.nixl_s / 1e9

    @property
    def memcpy_gbps(self) -> float:
        return self.size_bytes / self.memcpy_s / 1e9

    @property
    def ratio(self) -> float:
        return self.memcpy_s / self.nixl_s


def _tensor(size: int, device: str, fill: int):  # -> torch.Tensor
    import torch

    tensor = torch.empty(size, dtype=torch.uint8, device=device)
    tensor.fill_(fill)
    return tensor


def _memory_type(device: str) -> str:
    return "VRAM" if device == "cuda" else "DRAM"


def _pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def _target(conn: Connection, max_size: int, device: str, core: int | None) -> None:
    """Owns the source buffer; the initiator READs from it. Stays until told to stop."""
    from nixl._api import nixl_agent, nixl_agent_config

    _pin(core)
    agent = nixl_agent("target", nixl_agent_config(backends=["UCX"]))
    source = _tensor(max_size, device, fill=7)
    registered = agent.register_memory([source])
    conn.send((agent.get_agent_metadata(), source.data_ptr()))
    conn.recv()  # "done"
    agent.deregister_memory(registered)


def _initiator(conn: Connection, options: dict, result: Connection) -> None:
    import torch
    from nixl._api import nixl_agent, nixl_agent_config

    _pin(options["initiator_core"])
    torch.set_num_threads(1)  # one core: more threads only contend for it
    device, max_size = options["device"], max(options["sizes"])
    memory = _memory_type(device)
    agent = nixl_agent("initiator", nixl_agent_config(backends=["UCX"]))
    destination = _tensor(max_size, device, fill=0)
    local_source = _tensor(max_size, device, fill=7)
    registered = agent.register_memory([destination])
    metadata, remote_address = conn.recv()
    remote = agent.add_remote_agent(metadata)
    results = []
    for size in options["sizes"]:
        local = agent.get_xfer_descs([(destination.data_ptr(), size, 0)], memory)
        far = agent.get_xfer_descs([(remote_address, size, 0)], memory)
        handle = agent.initialize_xfer("READ", local, far, remote)
        runs = options["iterations"] + 1  # the first run warms up connections and pages
        nixl_times = [_timed_read(agent, handle) for _ in range(runs)][1:]
        agent.release_xfer_handle(handle)
        if int(destination[size - 1].item()) != 7:
            raise RuntimeError(f"NIXL READ of {size} bytes did not land")
        destination.zero_()
        copy_times = [
            _timed_copy(destination[:size], local_source[:size], device) for _ in range(runs)
        ][1:]
        results.append(
            RawResult(size, statistics.median(nixl_times), statistics.median(copy_times))
        )
    agent.deregister_memory(registered)
    conn.send("done")
    result.send(results)


def _timed_read(agent, handle, timeout_s: float = 60.0) -> float:
    started = time.perf_counter()
    state = agent.transfer(handle)
    while state not in ("DONE", "ERR"):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError("NIXL READ did not finish")
        state = agent.check_xfer_state(handle)
    if state == "ERR":
        raise RuntimeError("NIXL READ failed")
    return time.perf_counter() - started


def _timed_copy(destination, source, device: str) -> float:
    import torch

    started = time.perf_counter()
    destination.copy_(source)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_raw(sizes: list[int], iterations: int, device: str, cores: list[int]) -> list[RawResult]:
    context = mp.get_context("spawn")
    target_end, initiator_end = context.Pipe()
    result_out, result_in = context.Pipe()
    target_core = cores[0] if cores else None
    options = {
        "sizes": sizes,
        "iterations": iterations,
        "device": device,
        "initiator_core": cores[-1] if cores else None,
    }
    target = context.Process(target=_target, args=(target_end, max(sizes), device, target_core))
    initiator = context.Process(target=_initiator, args=(initiator_end, options, result_in))
    target.start()
    initiator.start()
    try:
        deadline = time.monotonic() + 600
        while not result_out.poll(0.5):
            if not (target.is_alive() and initiator.is_alive()):
                raise RuntimeError("a NIXL benchmark process died (see its traceback above)")
            if time.monotonic() > deadline:
                raise TimeoutError("raw NIXL benchmark did not finish in 10 minutes")
        return result_out.recv()
    finally:
        for process in (initiator, target):
            process.join(timeout=30)  # each exits once the other is done
            if process.pid is not None and process.is_alive():
                stop_tree(process.pid, grace_s=5)
                process.join(timeout=1)  # reap it


def print_raw(results: list[RawResult], device: str) -> None:
    kind = "VRAM->VRAM" if device == "cuda" else "DRAM->DRAM"
    print(f"\nraw NIXL (UCX) READ between two processes, {kind}, median of runs")
    print(f"{'size':>9} {'NIXL GB/s':>10} {'memcpy GB/s':>12} {'ratio':>6}")
    for row in results:
        print(
            f"{row.size_bytes // MiB:>5} MiB {row.nixl_gbps:>10.2f} {row.memcpy_gbps:>12.2f} "
            f"{row.ratio:>6.2f}"
        )


# ---- vLLM's own view: per-request NIXL transfer time on a running prefill/decode pair ----

XFER = "vllm:nixl_xfer_time_seconds"
BYTES = "vllm:nixl_bytes_transferred"


def scrape(url: str) -> dict[str, float]:
    """Sums of each sample name over its labels, from a worker's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def prompt(model: str, length: int, salt: str) -> str | list[int]:
    """`length` prompt tokens of `model`, different for each `salt` (no prefix-cache hits)."""
    import random

    rng = random.Random(f"{salt}/{length}")
    if model == "tiny":  # the tiny tokenizer: one token per character
        return "".join(chr(rng.randrange(32, 127)) for _ in range(length))
    from bench.model_timing import prompt_ids
    from pdserve.workers.checkpoint import ensure_model

    return prompt_ids(ensure_model(model), length, rng.randrange(10_000))


def one_hop(
    prefill_url: str, decode_url: str, length: int, salt: str, model: str = "tiny"
) -> dict[str, float]:
    """One P/D request of `length` prompt tokens; the decode worker's NIXL metric deltas."""
    import httpx

    from pdserve.disagg import decode_request, prefill_request

    body = {"model": model, "max_tokens": 2, "temperature": 0,
            "prompt": prompt(model, length, salt)}  # fmt: skip
    before = scrape(decode_url)
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        answer = client.post(f"{prefill_url}/v1/completions", json=prefill_request(body))
        prefilled = time.perf_counter()
        client.post(f"{decode_url}/v1/completions", json=decode_request(body, answer.json()))
        finished = time.perf_counter()
    after = scrape(decode_url)
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    return {
        "xfer_s": delta.get(f"{XFER}_sum", 0.0),
        "xfers": delta.get(f"{XFER}_count", 0.0),
        "bytes": delta.get(f"{BYTES}_sum", 0.0),
        "prefill_s": prefilled - started,
        "decode_s": finished - prefilled,
    }


def run_vllm(
    prefill_url: str | None,
    decode_url: str | None,
    lengths: list[int],
    repeats: int,
    model: str = "tiny",
) -> list[dict[str, float]]:
    pair = None
    if not (prefill_url and decode_url):
        pair = start_pair(model=model)
        prefill_url, decode_url = pair.urls
    table = []
    try:
        print("\nvLLM NixlConnector, decode worker's vllm:nixl_xfer_time_seconds per request")
        print(
            f"{'tokens':>6} {'xfer ms':>8} {'MiB':>7} {'GB/s':>6} {'prefill ms':>10} "
            f"{'decode ms':>9}"
        )
        for length in lengths:
            rows = [one_hop(prefill_url, decode_url, length, f"{time.time()}-{i}", model)
                    for i in range(repeats)]  # fmt: skip
            table.append({"prompt_tokens": length, "runs": rows})
            xfer = statistics.median(row["xfer_s"] for row in rows)
            size = statistics.median(row["bytes"] for row in rows)
            rate = size / xfer / 1e9 if xfer else 0.0
            print(f"{length:>6} {xfer * 1e3:>8.2f} {size / MiB:>7.2f} {rate:>6.2f} "
                  f"{statistics.median(r['prefill_s'] for r in rows) * 1e3:>10.1f} "
                  f"{statistics.median(r['decode_s'] for r in rows) * 1e3:>9.1f}")  # fmt: skip
    finally:
        if pair is not None:
            pair.stop()
    return table


@dataclass
class Pair:
    processes: list[subprocess.Popen[bytes]]
    urls: tuple[str, str]

    def stop(self) -> None:
        for process in self.processes:
            stop_tree(process.pid, grace_s=60)  # a vLLM server drains, then exits
            process.poll()  # reap it


def worker_argv(role: str, port: int, core: int, model: str = "tiny") -> list[str]:
    """`pdserve worker` of `model` in `role` on one core."""
    command = [sys.executable, "-m", "pdserve.cli", "worker", "--role", role, "--model", model]
    return [*command, "--port", str(port), "--cores", str(core)]


def start_pair(timeout_s: float = 400.0, model: str = "tiny") -> Pair:
    """A prefill (core 0) and a decode (core 1) worker of `model`, via pdserve worker."""
    ports = (free_port(), free_port())
    processes = [
        subprocess.Popen(
            worker_argv(role, port, core, model),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        for role, port, core in (("prefill", ports[0], 0), ("decode", ports[1], 1))
    ]
    pair = Pair(processes, (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"))
    deadline = time.monotonic() + timeout_s
    try:
        for url, process in zip(pair.urls, processes, strict=True):
            wait_healthy(url, max(deadline - time.monotonic(), 0.0), process)
    except (RuntimeError, TimeoutError) as exc:
        pair.stop()
        raise RuntimeError(f"P/D pair did not start: {exc}") from None
    return pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and runs (< 2 min)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cores", default="0,1", help="target core, initiator core ('' = any)")
    parser.add_argument("--max-mib", type=int, default=None, help="largest buffer (MiB)")
    parser.add_argument("--vllm", action="store_true", help="also vLLM's per-request xfer time")
    parser.add_argument("--prefill-url", default=None, help="a running prefill worker")
    parser.add_argument("--decode-url", default=None, help="a running decode worker")
    parser.add_argument("--model", default="tiny", help="the pair's model (tiny, smollm2, ...)")
    parser.add_argument("--skip-raw", action="store_true", help="only the vLLM part")
    parser.add_argument("--out", default=None, help="JSON file of the run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    top = args.max_mib or (256 if args.quick else 512)
    sizes = [MiB << shift for shift in range(0, 10) if (1 << shift) <= top]
    cores = [int(c) for c in args.cores.split(",") if c.strip()]
    results = []
    if not args.skip_raw:
        results = run_raw(sizes, 3 if args.quick else 7, device=args.device, cores=cores)
        print_raw(results, args.device)
    hops: list[dict[str, float]] = []
    if args.vllm:
        lengths = [128, 512, 2000] if args.quick else [128, 256, 512, 1024, 2000]
        hops = run_vllm(
            args.prefill_url, args.decode_url, lengths, 2 if args.quick else 4, args.model
        )
    if args.out:
        run = {"argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "raw": [vars(row) for row in results], "vllm": hops}  # fmt: skip
        with open(args.out, "w") as handle:
            json.dump(run, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
