"""The objects one gateway app runs on, built once in its lifespan and passed to the handlers."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from pdserve.gateway.auth import AuthConfig
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.proxy import Forwarder
from pdserve.gateway.tokens import PromptCounter
from pdserve.gateway.upstream import Upstream
from pdserve.pools.manager import PoolManager


@dataclass
class Gateway:
    manager: PoolManager
    forwarder: Forwarder
    counter: PromptCounter
    metrics: GatewayMetrics
    auth: AuthConfig
    client: httpx.AsyncClient  # health and metrics probes
    upstream: Upstream  # the request path
