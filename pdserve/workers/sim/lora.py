"""LoRA adapters on the simulated worker, following vLLM 0.32's OpenAI server.

With LoRA on (`--enable-lora`, or a profile model with adapters) the worker serves its base
model and every adapter it holds: those named at start (`--lora-modules name=path`) and those
loaded at run time (`POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, removed by
`POST /v1/unload_lora_adapter {"lora_name"}`), with vLLM's answers: 200 and a plain-text line,
400 for one already loaded, 404 for an unload of one it does not hold. `/v1/models` lists each
adapter with its base model as `parent`. An adapter's tokens are a pure function of its name
too (its salt is folded into the seed), so prefill and decode workers holding the same adapter
agree, and the base model and each adapter answer differently.

vLLM keeps any number of loaded adapters registered and swaps at most `max_loras` into the
batch; like it, this worker does not refuse a load past `max_loras` (the gateway bounds it) but
counts the adapters it holds (`loaded`), so tests see what the gateway made it hold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response


def adapter_salt(name: str) -> int:
    """The seed offset of an adapter's tokens (0 for the base model)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "big")


@dataclass
class LoraRegistry:
    """The adapters one worker holds: name -> path, and how many loads and unloads it saw."""

    max_loras: int = 0  # 0: LoRA off (adapter names are unknown models)
    loaded: dict[str, str] = field(default_factory=dict)
    loads: int = 0
    unloads: int = 0

    @property
    def enabled(self) -> bool:
        return self.max_loras > 0

    def load(self, name: str, path: str) -> tuple[int, str]:
        if name in self.loaded:
            return 400, f"The lora adapter '{name}' has already been loaded."
        self.loaded[name] = path
        self.loads += 1
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> tuple[int, str]:
        if self.loaded.pop(name, None) is None:
            return 404, f"The lora adapter '{name}' cannot be found."
        self.unloads += 1
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def cards(self, parent: str, created: int) -> list[dict[str, Any]]:
        return [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": parent,
                "max_model_len": None,
                "permission": [],
            }
            for name, path in self.loaded.items()
        ]


def parse_modules(values: list[str] | None) -> dict[str, str]:
    """`--lora-modules name=path ...` (vLLM also takes a JSON object; `name=path` is what
    pdserve composes)."""
    modules = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules: expected name=path, got {value!r}")
        modules[name] = path
    return modules


def _error(status: int, message: str) -> JSONResponse:
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def add_routes(app: FastAPI, registry: LoraRegistry) -> None:
    """vLLM's runtime load and unload endpoints (only with LoRA on, as vLLM)."""
    if not registry.enabled:
        return

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        body = await body_of(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        status, message = registry.load(name, path)
        return PlainTextResponse(message) if status == 200 else _error(status, message)

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        name = (await body_of(request)).get("lora_name")
        if not isinstance(name, str) or not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        status, message = registry.unload(name)
        return PlainTextResponse(message) if status == 200 else _error(status, message)
