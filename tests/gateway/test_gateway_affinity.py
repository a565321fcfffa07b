"""Prefix-affinity over simulated workers: the same prompt prefix lands on the same decode
replica, and the route counts only the tokens that replica has not cached."""

from __future__ import annotations

import pytest

from pdserve.pools.prefix import PrefixIndex, block_hashes
from tests.support.gateway import running_app

pytestmark = pytest.mark.integration


@pytest.mark.unit
def test_block_hashes_chain_and_index_hits_only_prefixes() -> None:
    ids = list(range(300))
    hashes = block_hashes(ids, 128)
    assert len(hashes) == 2  # 300 // 128 full blocks; the partial third is never cached
    other = block_hashes([1, *ids[1:]], 128)
    assert other[0] != hashes[0] and other[1] != hashes[1]  # a change early changes every block
    index = PrefixIndex(block_size=128, capacity_blocks=3)
    index.record("a", hashes)
    assert index.cached_tokens("a", hashes) == 256
    assert index.cached_tokens("a", block_hashes(ids + list(range(200)), 128)) == 256
    assert index.cached_tokens("a", other) == 0
    assert index.cached_tokens("b", hashes) == 0
    index.record("a", block_hashes(list(range(1000, 1300)), 128))  # LRU keeps 3 blocks
    assert index.cached_tokens("a", hashes) == 0  # the first block was evicted: no prefix
    index.forget("a")
    assert index.cached_tokens("a", block_hashes(list(range(1000, 1300)), 128)) == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_repeated_prefix_is_sticky_and_routed_by_uncached_tokens() -> None:
    async with running_app("gw-affinity") as (app, client):
        manager = app.state.gateway.manager
        document = "".join(
            f"clause {i}: the tenant shall keep the premises tidy.\n" for i in range(8)
        )
        body = {"model": "tiny", "prompt": document, "max_tokens": 4, "temperature": 0}
        assert 400 < len(document) < 512  # byte tokens: 3 full blocks of 128

        first = await client.post("/v1/completions", json=body)
        # 4xx uncached tokens >= threshold 200 on a cold replica
        assert first.headers["x-pdserve-route"] == "disaggregated"
        second = await client.post("/v1/completions", json=body)
        # 3 x 128 = 384 cached, ~60 uncached < 200: prefilled where it decodes
        assert second.headers["x-pdserve-route"] == "local"
        assert second.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]

        pool = manager.pools["decode"]
        for n in range(6):
            variant = body | {"prompt": document + f"Q{n}?"}
            answer = await client.post("/v1/completions", json=variant)
            assert answer.headers["x-pdserve-route"] == "local"
        _, ids = app.state.gateway.counter.encode_sync(body)
        hashes = block_hashes(ids, 128)
        owners = [rid for rid in pool.replicas if pool.prefixes.cached_tokens(rid, hashes) > 0]
        assert len(owners) == 1  # every request with this prefix went to one replica
