"""The objects one gateway app runs on, built once in its lifespan and passed to the handlers."""

from __future__ import annotations

from dataclasses import dataclass

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
    upstream: Upstream  # the request path and the workers' health and metrics probes
