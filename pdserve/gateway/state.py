"""The objects one gateway app runs on, built once in its lifespan and passed to the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from pdserve.gateway.auth import AuthConfig
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.proxy import Forwarder
from pdserve.gateway.rollouts import Rollouts
from pdserve.gateway.tokens import PromptCounter, PromptCounters
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
    rollouts: Rollouts  # each rolled-out model's versions, weights and windows
    # every served model's counter (`counter`: the profile's own model's)
    counters: PromptCounters = field(default_factory=PromptCounters)
