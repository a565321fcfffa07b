"""One simulated worker's request lifecycle: admission, the P/D hand-off (prefill lease, decode
pull with `kv_load_failure_policy`), token timing into vLLM's metrics, and response events."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from pdserve.workers.sim import kv, tokens
from pdserve.workers.sim import roofline as hardware
from pdserve.workers.sim.engine import Engine
from pdserve.workers.sim.lora import LoraRegistry, adapter_salt
from pdserve.workers.sim.protocol import ApiError, Outcome, ParsedRequest
from pdserve.workers.sim.scheduler import Sequence

RECEIVED_KEPT = 256  # the last requests' kv_transfer_params and ids, for /sim/received


@dataclass(frozen=True)
class WorkerConfig:
    served_model: str
    model_root: str
    host: str
    port: int
    role: str
    max_model_len: int
    kv_load_failure_policy: Literal["recompute", "fail"] = "recompute"
    kv_lease_s: float = 30.0
    max_loras: int = 0  # LoRA off unless >= 1
    lora_modules: tuple[tuple[str, str], ...] = ()  # adapters held from the start


def _prompt_point(req: ParsedRequest, salt: bytes) -> float:
    """The prompt's fixed point in [0, 1) for one kind of fault: the same prompt always meets
    the same fate, so a test's failures are repeatable."""
    key = salt + bytes(str(req.prompt_ids), "utf-8")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass
class Token:
    """One streamed token: its text (may be "" when a stop string hides it) and, if last, why."""

    text: str
    finish: tuple[str, str | None] | None


@dataclass
class Service:
    config: WorkerConfig
    engine: Engine
    client: httpx.AsyncClient | None = None
    engine_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    leases: kv.LeaseStore = field(init=False)
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))
    lora: LoraRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.leases = kv.LeaseStore(self.engine_id, self.config.kv_lease_s)
        self.lora = LoraRegistry(self.config.max_loras, dict(self.config.lora_modules))

    def record_received(
        self, path: str, request_id: str | None, body: Any, traceparent: str | None = None
    ) -> None:
        """Keep what a completion request carried: the gateway's tests read it back."""
        params = body.get("kv_transfer_params") if isinstance(body, dict) else None
        self.received.append(
            {
                "path": path,
                "request_id": request_id,
                "kv_transfer_params": params,
                "traceparent": traceparent,
                "model": body.get("model") if isinstance(body, dict) else None,
            }
        )

    def _prefill_fails(self, req: ParsedRequest) -> bool:
        rate = self.engine.faults.prefill_fail
        if rate <= 0 or not kv.wants_remote_decode(req.kv_params):
            return False
        return _prompt_point(req, b"") < rate

    def check_faults(self, req: ParsedRequest) -> None:
        """The injected failures a request meets before its first token (500, as vLLM's)."""
        if self._prefill_fails(req):
            raise ApiError(500, "simulated prefill failure", "InternalServerError")
        if _prompt_point(req, b"error:") < self.engine.faults.error_share:
            raise ApiError(500, "simulated engine error", "InternalServerError")

    async def stream(self, req: ParsedRequest, request_id: str) -> AsyncIterator[Token]:
        """The request's tokens, in (scaled) real time, with TTFT/ITL/e2e metrics recorded."""
        self.check_faults(req)
        start = time.perf_counter()
        await asyncio.sleep(self.engine.scaled(self.engine.timing.request_overhead_s))
        salt = adapter_salt(req.adapter) if req.adapter else 0
        generated = tokens.generate(req.seed + salt, req.prompt_ids, req.max_tokens)
        count, stop = tokens.cut_at_stop(generated, req.stops)
        computed = await self._remote_kv(req)
        seq = Sequence(request_id, len(req.prompt_ids), count, computed=computed)
        text = tokens.visible_text(generated[:count], stop)
        last = start
        async for produced in self.engine.generate(seq):
            now = time.perf_counter()
            hist = self.engine.metrics.ttft if produced == 1 else self.engine.metrics.itl
            hist.observe(now - last)
            last = now
            piece = text[produced - 1 : produced] if produced <= len(text) else ""
            if produced < count:
                yield Token(piece, None)
                continue
            reason = ("stop", stop) if stop is not None else ("length", None)
            self.engine.metrics.e2e.observe(now - start)
            self.engine.metrics.request_success[reason[0]].inc()
            yield Token(piece, reason)

    async def _remote_kv(self, req: ParsedRequest) -> int:
        """Prompt tokens whose KV came from a prefill peer (0: compute them all here)."""
        prompt_len = len(req.prompt_ids)
        pulled = 0
        if kv.wants_remote_prefill(req.kv_params) and not self.engine.faults.skip_kv_pull:
            assert req.kv_params is not None
            self.engine.pulling += 1
            try:
                pulled = await self._pull(req.kv_params, prompt_len)
            finally:
                self.engine.pulling -= 1
        # like vLLM, the decode side computes the last prompt position itself
        external = max(0, pulled - 1)
        if external:
            self.engine.metrics.count_prompt(external, "external_kv_transfer")
        self.engine.metrics.count_prompt(prompt_len - external, "local_compute")
        self.engine.metrics.prefix_queries.inc(prompt_len)
        return external

    async def _pull(self, params: dict[str, Any], prompt_len: int) -> int:
        failure = await self._try_pull(params, prompt_len)
        if failure is None:
            return prompt_len
        self.engine.metrics.nixl_failed.inc()
        if self.config.kv_load_failure_policy == "fail":
            raise ApiError(500, f"KV load failed: {failure}", "InternalServerError")
        return 0

    async def _try_pull(self, params: dict[str, Any], prompt_len: int) -> str | None:
        """None when the blocks arrived; else why not."""
        url = f"http://{params.get('remote_host')}:{params.get('remote_port')}{kv.PULL_PATH}"
        if self.client is None:
            return "no HTTP client (the app is not running)"
        try:
            resp = await self.client.post(url, json=kv.pull_body(params), timeout=10.0)
        except httpx.HTTPError as exc:
            return f"prefill peer unreachable ({type(exc).__name__})"
        if resp.status_code != 200:
            return f"prefill peer answered {resp.status_code}"
        body = resp.json()
        if body.get("num_tokens") != prompt_len:
            return f"peer holds {body.get('num_tokens')} tokens, prompt has {prompt_len}"
        source = hardware.ACCELERATORS.get(str(body.get("accelerator")), hardware.CPU)
        seconds = hardware.kv_transfer_seconds(
            source, self.engine.timing.accelerator, float(body["bytes"])
        )
        await asyncio.sleep(self.engine.scaled(seconds))
        self.engine.metrics.nixl_xfer.observe(seconds)
        self.engine.metrics.nixl_bytes.observe(float(body["bytes"]))
        return None

    def hand_off(self, req: ParsedRequest, request_id: str) -> dict[str, Any] | None:
        """After a prefill request finishes: pin its blocks under a lease, name them."""
        if not kv.wants_remote_decode(req.kv_params):
            return None
        prompt_len = len(req.prompt_ids)
        blocks = self.engine.scheduler.blocks_for(prompt_len)
        lease_id = f"{request_id}-0-{uuid.uuid4().hex[:8]}"
        lease = self.leases.grant(
            lease_id, blocks, prompt_len, self.engine.timing.kv_bytes(prompt_len), time.monotonic()
        )
        self.engine.scheduler.hold(blocks)
        return kv.prefill_params(lease, self.engine_id, self.config.host, self.config.port)

    def serve_pull(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The internal endpoint: hand the named blocks to a puller and free them."""
        lease = self.leases.take(body.get("remote_engine_id"), body.get("remote_request_id"))
        if lease is None:
            return None
        self.engine.scheduler.release(len(lease.block_ids))
        return {
            "num_tokens": lease.num_tokens,
            "bytes": lease.num_bytes,
            "accelerator": self.engine.timing.accelerator.name,
        }

    def expire_leases(self) -> int:
        gone = self.leases.expire(time.monotonic())
        for lease in gone:
            self.engine.scheduler.release(len(lease.block_ids))
            self.engine.metrics.nixl_expired.inc()
        return len(gone)

    async def complete(self, req: ParsedRequest, request_id: str) -> Outcome:
        """A non-streamed request, run to the end."""
        text, produced = "", 0
        finish: tuple[str, str | None] = ("length", None)
        async for token in self.stream(req, request_id):
            text += token.text
            produced += 1
            if token.finish is not None:
                finish = token.finish
        return Outcome(
            request_id=request_id,
            created=int(time.time()),
            model=req.adapter or self.config.served_model,
            text=text,
            finish_reason=finish[0],
            stop_reason=finish[1],
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=produced,
            kv_transfer_params=self.hand_off(req, request_id),
        )
