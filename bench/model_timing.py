"""Prefill and decode step times of one running worker, in the model's own tokens.

    python -m bench.model_timing --url http://127.0.0.1:8100 --model smollm2 \
        --lengths 64,256,512,1024,1800 --out bench/runs/model_timing_smollm2.json

Prompts are token-id lists (`/v1/completions` accepts them) cut from English text encoded with the
model's tokenizer, so a length is exact in that model's tokens; each starts with a different
token so no prompt hits the prefix cache. Prefill: the time to a 1-token answer (median of
`--repeats`). Decode: the gaps between streamed tokens of a 64-token answer to a short prompt
(`ignore_eos`). Run it with the worker alone on its core(s): `pdserve worker --role both
--model smollm2 --cores 0 --port 8100 --max-model-len 8192`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

TEXT = (
    "The history of the harbour town begins with a handful of fishing families who settled on "
    "the northern shore. Over the following centuries they built a stone pier, a market hall "
    "and a lighthouse whose keeper wrote down the weather every morning. "
)


def prompt_ids(tokenizer_dir: Path, length: int, salt: int) -> list[int]:
    """`length` token ids of English text, the first one varied by `salt` (no cache hits)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids: list[int] = []
    while len(ids) < length:
        ids += tokenizer.encode(TEXT, add_special_tokens=False).ids
    return [1000 + salt, *ids[: length - 1]]


def prefill_seconds(client: httpx.Client, model: str, ids: list[int]) -> float:
    start = time.perf_counter()
    answer = client.post(
        "/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0}
    )
    answer.raise_for_status()
    return time.perf_counter() - start


def decode_gaps(client: httpx.Client, model: str, ids: list[int], tokens: int) -> list[float]:
    body = {"model": model, "prompt": ids, "max_tokens": tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}  # fmt: skip
    arrivals = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append(time.perf_counter())
    return [later - earlier for earlier, later in zip(arrivals[1:], arrivals[2:], strict=False)]


def measure(url: str, model: str, tokenizer_dir: Path, lengths: list[int], repeats: int) -> dict:
    rows = []
    salt = 0
    with httpx.Client(base_url=url, timeout=600) as client:
        prefill_seconds(client, model, prompt_ids(tokenizer_dir, 32, salt))  # warm-up
        for length in lengths:
            times = []
            for _ in range(repeats):
                salt += 1
                times.append(
                    prefill_seconds(client, model, prompt_ids(tokenizer_dir, length, salt))
                )
            rows.append({"prompt_tokens": length, "prefill_s": times,
                         "median_s": statistics.median(times)})  # fmt: skip
        gaps = decode_gaps(client, model, prompt_ids(tokenizer_dir, 16, salt + 1), 64)
    return {
        "url": url,
        "model": model,
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "prefill": rows,
        "decode_gap_s": {
            "median": statistics.median(gaps),
            "p90": sorted(gaps)[len(gaps) * 9 // 10],
            "count": len(gaps),
        },  # fmt: skip
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--model", required=True, help="served name; also the checkpoint unless --tokenizer"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="checkpoint directory (default: --model's)"
    )
    parser.add_argument("--lengths", default="64,256,512,1024,1800")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args()
    from pdserve.workers.checkpoint import ensure_model

    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else ensure_model(args.model)
    lengths = [int(n) for n in args.lengths.split(",")]
    result = measure(args.url, args.model, tokenizer_dir, lengths, args.repeats)
    for row in result["prefill"]:
        print(f"prefill {row['prompt_tokens']:>5} tokens: {row['median_s'] * 1e3:8.1f} ms")
    print(f"decode step (gap) median {result['decode_gap_s']['median'] * 1e3:.1f} ms, "
          f"p90 {result['decode_gap_s']['p90'] * 1e3:.1f} ms")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
