"""Request-time overhead of the Reckon hook in a LiteLLM proxy (not part of the suite).

Starts `reckon serve`, the mock upstream, and two LiteLLM proxies on the same
config, one with the hook and one without, then times the same chat requests
through each, alternating, and prints p50/p99 of both and their difference.

  bash clients/python/ci.sh -k nothing   # once: builds the server, installs the venv
  target/py-client-venv/bin/python clients/python/bench/overhead.py --requests 2000 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gateway import MASTER_KEY, MODEL, Processes  # noqa: E402
from reckon_server import ADMIN_TOKEN, ReckonServer  # noqa: E402

import reckon_client as rc  # noqa: E402

TOKEN = "bench-gateway-token-0123456789abcdef012345"
BODY = {"model": MODEL, "max_tokens": 64, "user": "bench",
        "messages": [{"role": "user", "content": "How many GPU-hours did we use?"}]}


def pct(xs: list, p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


async def measure(ports: dict, requests: int, concurrency: int) -> dict:
    lat: dict = {name: [] for name in ports}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one(name: str, record: bool) -> None:
            start = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{ports[name]}/v1/chat/completions",
                                 json=BODY, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as r:
                await r.read()
                assert r.status == 200, await r.text()
            if record:
                lat[name].append(time.perf_counter() - start)

        for name in ports:  # warm up both
            await asyncio.gather(*(one(name, False) for _ in range(50)))
        for i in range(0, requests, concurrency):
            for name in (list(ports) if (i // concurrency) % 2 == 0 else list(ports)[::-1]):
                await asyncio.gather(*(one(name, True) for _ in range(concurrency)))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    work = tempfile.TemporaryDirectory(prefix="reckon-bench-")
    server = ReckonServer(f'[[credential]]\nname = "gw"\ntoken = "{TOKEN}"\norg = 1\n'
                          '[[price]]\nservice = 10\nunit = "tokens_in"\ncharge_unit = "USD"\n'
                          'per_unit = "0.000005"\n'
                          '[[price]]\nservice = 10\nunit = "tokens_out"\ncharge_unit = "USD"\n'
                          'per_unit = "0.00002"\n').start()
    procs = Processes(Path(work.name))
    try:
        async def setup() -> None:
            async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
                await admin.create_account(1)
                await admin.create_account(2, parent=1, draws_on_parent=True)
                await admin.topup(1, "USD", Decimal("1000000"))
        asyncio.run(setup())
        upstream = procs.mock_upstream()
        plain = procs.proxy_config(upstream, None)
        hooked = procs.proxy_config(upstream, {
            "server": f"127.0.0.1:{server.port}", "credential": TOKEN,
            "accounts": {"bench": 2}, "models": {MODEL: 10}})
        (p_plain,), (p_hook,) = procs.proxies(plain, 1), procs.proxies(hooked, 1)
        lat = asyncio.run(measure({"without hook": p_plain, "with hook": p_hook},
                                  args.requests, args.concurrency))
        print(f"{args.requests} requests per proxy, concurrency {args.concurrency}, "
              "mock upstream answering at once")
        for name, xs in lat.items():
            print(f"  {name:13s} p50 {pct(xs, 50):7.2f} ms  p99 {pct(xs, 99):7.2f} ms  "
                  f"mean {statistics.mean(xs) * 1000:7.2f} ms")
        a, b = lat["without hook"], lat["with hook"]
        print(f"  overhead      p50 {pct(b, 50) - pct(a, 50):+7.2f} ms  "
              f"p99 {pct(b, 99) - pct(a, 99):+7.2f} ms")
    finally:
        procs.stop()
        server.cleanup()
        work.cleanup()


if __name__ == "__main__":
    main()
