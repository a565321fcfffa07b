"""The sim's KV hand-off: vLLM 0.32 NixlConnector's params keys, leases, expiry."""

from __future__ import annotations

import pytest

from pdserve import disagg
from pdserve.workers.sim import kv

pytestmark = pytest.mark.unit

VLLM_PREFILL_KEYS = {
    "do_remote_prefill", "do_remote_decode", "remote_block_ids", "remote_engine_id",
    "remote_request_id", "remote_host", "remote_port", "tp_size", "dcp_size", "pp_size",
    "remote_num_tokens", "remote_blocks_expiry_time", "transfer_mode",
    "remote_prefill_cached_tokens",
}  # fmt: skip


def test_prefill_params_have_vllms_keys_and_values() -> None:
    store = kv.LeaseStore("engine-1", lease_s=30)
    lease = store.grant("req-1", blocks=2, num_tokens=200, num_bytes=819_200, now=100.0)
    params = kv.prefill_params(lease, "engine-1", "127.0.0.1", 9000)
    assert set(params) == VLLM_PREFILL_KEYS
    assert params["remote_block_ids"] == [[1, 2]]  # one list per KV group
    assert (params["do_remote_prefill"], params["do_remote_decode"]) == (True, False)
    assert params["transfer_mode"] == "pull" and params["remote_num_tokens"] == 200


def test_the_disagg_transforms_mark_prefill_and_decode_requests() -> None:
    body = {"model": "tiny", "prompt": "x" * 10, "max_tokens": 5}
    assert kv.wants_remote_decode(disagg.prefill_request(body)[disagg.KV_PARAMS_KEY])
    store = kv.LeaseStore("e", 30)
    params = kv.prefill_params(store.grant("r", 1, 10, 40, 0.0), "e", "h", 1)
    decode = disagg.decode_request(body, {"kv_transfer_params": params})
    assert kv.wants_remote_prefill(decode[disagg.KV_PARAMS_KEY])
    assert not kv.wants_remote_prefill(body.get(disagg.KV_PARAMS_KEY))


def test_a_pull_claims_a_lease_once_and_only_from_its_engine() -> None:
    store = kv.LeaseStore("engine-1", lease_s=30)
    store.grant("req-1", blocks=1, num_tokens=10, num_bytes=40, now=0.0)
    assert store.take("engine-2", "req-1") is None
    assert store.take("engine-1", "req-1") is not None
    assert store.take("engine-1", "req-1") is None


def test_unclaimed_leases_expire() -> None:
    store = kv.LeaseStore("e", lease_s=5)
    store.grant("old", 1, 10, 40, now=0.0)
    store.grant("new", 1, 10, 40, now=4.0)
    assert [lease.request_id for lease in store.expire(now=5.0)] == ["old"]
    assert store.take("e", "old") is None and "new" in store.leases
    assert store.grant("again", 2, 10, 40, 6.0).block_ids == (3, 4)  # ids are never reused
