"""What `pdserve status` shows, computed from the gateway's GET /admin/pools and two /metrics
scrapes (pure: the HTTP reads are in `pdserve.status.poll`).

Per pool: replicas by state, desired and the reason of the last scale decision, queue,
concurrency, queued prompt tokens, tokens/s (prompt tokens of a prefill pool, generated
tokens of a decode pool). Per route: requests/s, errors/s, TTFT and ITL
p50/p99. Rates and quantiles are over the window between the oldest and the newest scrape
(`window_s` in the report), from the counters' and histograms' increase in it.
"""

from __future__ import annotations

from typing import Any

from pdserve.status.scrape import Scrape, bucket_delta, quantile, rate

REQUESTS = "pdserve_requests_total"
TTFT = "pdserve_ttft_seconds"
ITL = "pdserve_itl_seconds"
REPLICA_STATES = ("ready", "starting", "draining", "failed")
QUANTILES = {"p50": 0.5, "p99": 0.99}
PROMPT_TOKENS = "pdserve_prompt_tokens_total"
GENERATED_TOKENS = "pdserve_generation_tokens_total"


def build_report(pools: dict[str, Any], new: Scrape, old: Scrape | None) -> dict[str, Any]:
    """The live view's figures; without an older scrape rates and quantiles are empty."""
    window = new.at - old.at if old is not None else 0.0
    tokens = _pool_tokens(pools, new, old, window)
    return {
        "window_s": round(window, 6),
        "pools": {name: _pool(pool, tokens.get(name)) for name, pool in pools.items()},
        "routes": _routes(new, old, window),
    }


def _pool(pool: dict[str, Any], tokens_per_s: float | None) -> dict[str, Any]:
    replicas = pool.get("replicas", {})
    last = pool.get("last_decision") or {}
    return {
        "role": pool.get("role"),
        "in_profile": pool.get("in_profile", True),
        "replicas": {state: int(replicas.get(state, 0)) for state in REPLICA_STATES},
        "desired": pool.get("desired"),
        "reason": last.get("reason"),
        "queue": pool.get("queue_depth", 0),
        "queued_prompt_tokens": pool.get("queued_prompt_tokens", 0),
        "concurrency": pool.get("concurrency", 0),
        "tokens_per_s": tokens_per_s,
    }


def _pool_tokens(
    pools: dict[str, Any], new: Scrape, old: Scrape | None, window: float
) -> dict[str, float]:
    """Tokens per second of each pool of the profile, from the gateway's token counters (of
    completed requests): a prefill pool's are the prompt tokens of disaggregated requests, a
    decode or unified pool's the tokens generated on every route. A role that two pools of the
    profile share gets none (the counters carry no pool)."""
    if old is None or window <= 0:
        return {}
    by = ("route",)
    prompt = rate(new.total(PROMPT_TOKENS, by), old.total(PROMPT_TOKENS, by), window)
    generated = rate(new.total(GENERATED_TOKENS, by), old.total(GENERATED_TOKENS, by), window)
    per_role = {
        "prefill": prompt.get(("disaggregated",), 0.0),
        "decode": sum(generated.values()),
        "both": sum(generated.values()),
    }
    serving = [(name, p.get("role")) for name, p in pools.items() if p.get("in_profile", True)]
    roles = [role for _, role in serving]
    return {
        name: round(per_role[role], 6)
        for name, role in serving
        if role in per_role and roles.count(role) == 1
    }


def _routes(new: Scrape, old: Scrape | None, window: float) -> dict[str, dict[str, Any]]:
    by = ("route",)
    counts = new.total(REQUESTS, ("route", "status"))
    names = sorted({key[0] for key in counts} | {key[0] for key in new.buckets(TTFT, by)})
    routes: dict[str, dict[str, Any]] = {}
    for route in names:
        routes[route] = {
            **_request_rates(route, counts, old, window),
            "ttft_s": _quantiles(TTFT, route, new, old),
            "itl_s": _quantiles(ITL, route, new, old),
        }
    return routes


def _request_rates(
    route: str, counts: dict[tuple[str, ...], float], old: Scrape | None, window: float
) -> dict[str, float | None]:
    if old is None or window <= 0:
        return {"requests_per_s": None, "errors_per_s": None}
    rates = rate(counts, old.total(REQUESTS, ("route", "status")), window)
    mine = {status: value for (name, status), value in rates.items() if name == route}
    errors = sum(value for status, value in mine.items() if not status.startswith("2"))
    return {"requests_per_s": round(sum(mine.values()), 6), "errors_per_s": round(errors, 6)}


def _quantiles(
    histogram: str, route: str, new: Scrape, old: Scrape | None
) -> dict[str, float | None]:
    if old is None:
        return dict.fromkeys(QUANTILES)
    now = new.buckets(histogram, ("route",)).get((route,), {})
    before = old.buckets(histogram, ("route",)).get((route,), {})
    window = bucket_delta(now, before)
    return {name: _round(quantile(q, window)) for name, q in QUANTILES.items()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
