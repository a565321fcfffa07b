"""`pdserve profile use NAME --url URL`: switch a running gateway's profile and wait for it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pdserve import profile as profiles

SWITCH_WAIT_S = 600.0


def switch_profile(
    name: str, url: str, admin_token: str | None = None, wait_s: float = SWITCH_WAIT_S
) -> int:
    token = admin_token or os.environ.get("PDSERVE_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            answer = client.put("/admin/profile", json=switch_body(name))
            if answer.status_code not in (200, 202):
                print(f"error: {answer.status_code}: {_message(answer)}", file=sys.stderr)
                return 1
            target = answer.json()["pending"] or answer.json()["active"]
            print(f"switching {base} to profile {target}...")
            return _wait_active(client, target, wait_s)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {base}: {exc}", file=sys.stderr)
        return 1


def switch_body(name_or_path: str) -> dict[str, Any]:
    """The admin API takes a profile by name (one in the gateway's profiles directory) or
    whole: a path is read here, on the caller's machine, and sent inline."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return {"profile": profiles.load(name_or_path).model_dump(mode="json")}
    return {"name": name_or_path}


def _wait_active(client: httpx.Client, target: str, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = client.get("/admin/profile").json()
        if state["active"] == target and state["pending"] is None:
            print(f"profile {target} is active")
            return 0
        time.sleep(0.5)
    print(f"error: profile {target} not active after {wait_s:g} s", file=sys.stderr)
    return 1


def _message(response: httpx.Response) -> Any:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text
