"""Short requests' latency while one huge request runs, on two servers in ABBA rounds (one run, same inputs).

    python -m benchmarks.small_latency URL_A URL_B [long_doc] [cjk_2m]

`long_doc`: a 100,000-word document is classified (start both servers with a short
LONGDOC_SCHEDULER_AGING_S to see the aged document at the front); `cjk_2m`: a 2,000,000-character Chinese
text is tokenized (`max_chunks` 1). Meanwhile a 60-word request is sent every 0.2 s; each round prints the
big request's seconds and the short ones' p50 / p99 / max. docs/benchmarks.md records session 13's run.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

import httpx

WORDS = (
    "the",
    "senate",
    "vote",
    "on",
    "the",
    "bill",
    "came",
    "after",
    "a",
    "long",
    "night",
    "of",
    "debate",
    "over",
    "taxes",
    "and",
    "spending",
    "in",
    "congress",
)
SHORT_EVERY_S = 0.2


def words(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


async def one_round(url: str, big_body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await client.post("/classify", json={"text": "warm"})
        latencies: list[float] = []
        big_done = asyncio.Event()

        async def big() -> float:
            started = time.perf_counter()
            response = await client.post("/classify", json=big_body)
            response.raise_for_status()
            big_done.set()
            return time.perf_counter() - started

        async def short(seed: int) -> None:
            started = time.perf_counter()
            (await client.post("/classify", json={"text": words(60, seed)})).raise_for_status()
            latencies.append(time.perf_counter() - started)

        async def shorts() -> None:
            sent: list[asyncio.Task[None]] = []
            await asyncio.sleep(0.1)  # the big request first
            while not big_done.is_set():
                sent.append(asyncio.create_task(short(1000 + len(sent))))
                await asyncio.sleep(SHORT_EVERY_S)
            await asyncio.gather(*sent)

        big_s, _ = await asyncio.gather(big(), shorts())
    latencies.sort()
    return {
        "big_s": round(big_s, 2),
        "short_requests": len(latencies),
        "p50": round(statistics.median(latencies), 3),
        "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
        "max": round(latencies[-1], 3),
    }


async def main(url_a: str, url_b: str, scenarios: list[str]) -> dict[str, list[dict[str, Any]]]:
    bodies: dict[str, dict[str, Any]] = {
        "long_doc": {"text": words(100_000, 1)},
        "cjk_2m": {"text": "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(2_000_000)), "max_chunks": 1},
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for name in scenarios or list(bodies):
        results[name] = []
        for server, url in (("A", url_a), ("B", url_b), ("B", url_b), ("A", url_a)):
            row = {"server": server, **await one_round(url, bodies[name])}
            results[name].append(row)
            print(name, row, flush=True)
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))))
