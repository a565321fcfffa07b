"""The leader's board of demand held at its peer gateways: sums fresh reports, ignores stale
ones and peers no longer discovered, refuses malformed reports."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pdserve.pools.peers import HeldDemand, PeerDemand, PeerPoller, parse_demand

pytestmark = pytest.mark.unit


def test_fresh_reports_add_up_and_stale_ones_count_for_nothing() -> None:
    board = PeerDemand(stale_s=5.0)
    board.report("http://a", {"decode": HeldDemand(2, 1, 300)}, now=100.0)
    board.report(
        "http://b", {"decode": HeldDemand(1, 0, 50), "prefill": HeldDemand(0, 3, 9)}, 103.0
    )
    # 2 + 1 held, 1 + 0 diverted, 300 + 50 tokens
    assert board.total("decode", now=104.0) == HeldDemand(3, 1, 350)
    assert board.total("decode", now=106.0) == HeldDemand(1, 0, 50)  # a's is 6 s old
    assert board.total("other", now=104.0) == HeldDemand()
    board.forget_except({"http://a"})
    assert board.total("prefill", now=104.0) == HeldDemand()


@pytest.mark.parametrize(
    "payload",
    [[], {"decode": 3}, {"decode": {"queued_requests": -1}}, {"decode": {"queued_requests": True}}],
)
def test_a_malformed_report_is_refused(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_demand(payload)


class _Peers:
    async def peer_gateways(self, port: int) -> list[str]:
        return [f"http://up:{port}", f"http://down:{port}"]


async def test_a_poll_records_answering_peers_and_signals_held_demand() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/demand"
        assert request.headers["authorization"] == "Bearer t"
        if request.url.host == "down":
            return httpx.Response(401)
        body = {"decode": {"queued_requests": 1, "diverted_requests": 0, "prompt_tokens": 7}}
        return httpx.Response(200, json=body)

    board, demand = PeerDemand(), asyncio.Event()
    poller = PeerPoller(_Peers(), board, demand, lambda: 9000, "t", 0.1, clock=lambda: 10.0)
    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(transport=transport, headers={"authorization": "Bearer t"}) as c:
        await poller.poll_once(c)
    assert board.total("decode", now=10.0) == HeldDemand(1, 0, 7)
    assert demand.is_set()
