"""What makes two workers interchangeable: a key over everything a worker is launched with.

A profile switch reuses a pool whose key is unchanged and starts a new generation of workers
for a pool whose key changed (role, engine, model, KV transfer, cores, faults...). Replica
counts and scaling settings are not part of it: they never require a restart.
"""

from __future__ import annotations

import hashlib
import json

from pdserve.profile import Profile

SPEC_LABEL = "pdserve.io/worker-spec"


def worker_spec_key(profile: Profile, pool: str) -> str:
    # the pool's model by its spec, not by how the pool names it: a pool keeps its workers
    # when a profile of one model becomes one of several
    spec = profile.pools[pool].model_dump(mode="json", exclude={"replicas", "scaling", "model"})
    launched = {
        "pool": spec,
        "model": profile.model_for(pool).model_dump(mode="json"),
        "engine": profile.engine.model_dump(mode="json"),
        "kv_transfer": profile.kv_transfer.model_dump(mode="json"),
    }
    text = json.dumps(launched, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
