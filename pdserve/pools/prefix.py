"""Which prompt prefixes each replica has recently seen, in KV blocks, to estimate how much of a
new prompt its prefix cache will already hold (vLLM reuses cached KV in whole blocks).

Blocks are identified by chained hashes (each block's hash covers every token before it), the
scheme vLLM's prefix cache uses, so a hit is always a prefix. Bounded per replica (LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_CAPACITY_BLOCKS = 16_384


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the prompt's full blocks (a partial last block is never cached)."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        previous = hash((previous, tuple(token_ids[start : start + block_size])))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    def __init__(self, block_size: int, capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def record(self, replica_id: str, hashes: Sequence[int]) -> None:
        blocks = self._blocks.setdefault(replica_id, OrderedDict())
        for block in hashes:
            blocks[block] = None
            blocks.move_to_end(block)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

    def cached_tokens(self, replica_id: str, hashes: Sequence[int]) -> int:
        """Tokens of the longest prefix of `hashes` the replica has seen."""
        blocks = self._blocks.get(replica_id)
        if not blocks:
            return 0
        hits = 0
        for block in hashes:
            if block not in blocks:
                break
            hits += 1
        return hits * self.block_size

    def forget(self, replica_id: str) -> None:
        self._blocks.pop(replica_id, None)
