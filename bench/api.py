"""Concurrent clients on loopback against the REST API with the bundled model.

Starts redis-server (Debian's, or the embedded one) and `cbir api` itself, then
measures requests/s, p50 and p99 latency of POST /api/search by id at 1, 8 and 32
clients with the result cache off and on, combined search of three models, and the
time split of upload searches (decoding, feature extraction, search).
The load comes from wrk (Debian package) when installed, a C client that leaves the two
cores to the server; otherwise from an asyncio httpx client in Python.
Usage: python bench/api.py [--requests 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
math.randomseed({seed})
request = function()
  local id = math.random(0, {max_id})
  return wrk.format(nil, nil, nil, '{{"image_id": "' .. id .. '", "models": {models}, "top_k": 10{extra}}}')
end
"""


def load_wrk(url: str, token: str, path: str, models: list[str], clients: int, seconds: int, tmp: Path, extra: str = "",
             max_id: int = 999) -> dict:
    """wrk with ``clients`` connections searching random ids 0..max_id; req/s, p50, p99 (ms)."""
    script = tmp / "load.lua"
    script.write_text(WRK_SCRIPT.format(token=token, seed=clients, models=json.dumps(models), extra=extra, max_id=max_id))
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), url + path],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"errors under load:\n{out}")

    def ms(label: str) -> float:
        value = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        return float(value.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[value.group(2)]

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50"), "p99": ms("99")}

ROOT = Path(__file__).resolve().parent.parent
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(redis_url: str, tmp: Path, cache: bool, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    """`cbir api` on a free port (demo users), ready; ``env_overrides`` are CBIR_* settings."""
    port = free_port()
    env = {**os.environ, "CBIR_REDIS_URL": redis_url, "CBIR_DEMO": "1", "CBIR_CACHE": "1" if cache else "0",
           "CBIR_VAR_DIR": str(tmp / "var"), "CBIR_COLLECTION": str(ROOT / "image.orig"), "CBIR_FEATURES_DIR": str(ROOT / "features"),
           **env_overrides}
    proc = subprocess.Popen([sys.executable, "-m", "cbir", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not become ready")


async def load(url: str, token: str, path: str, bodies: list[dict], clients: int) -> dict:
    latencies: list[float] = []
    queue = list(bodies)
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(client: httpx.AsyncClient):
        while queue:
            body = queue.pop()
            t = time.perf_counter()
            r = await client.post(url + path, json=body, headers=headers)
            latencies.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="requests per level (Python client)")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per level (wrk)")
    args = ap.parse_args()
    use_wrk = shutil.which("wrk") is not None
    print(f"load generator: {'wrk' if use_wrk else 'python httpx (install wrk for lighter load)'}")
    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-"))
    redis_proc = None
    if shutil.which("redis-server"):
        port = free_port()
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
                                      stdout=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    else:
        from cbir.config import Settings
        from cbir.redis_server import embedded_url

        redis_url = embedded_url(Settings(var_dir=tmp / "var"))
    rng = random.Random(0)
    ids = [str(i) for i in range(1000)]
    try:
        print(f"{'endpoint':<34}{'cache':<6}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for cache in (False, True):
            proc, url = start_api(redis_url, tmp, cache)
            try:
                token = httpx.post(url + "/api/login", json={"username": "researcher", "password": "umons2024"}).json()["access_token"]
                single = [{"image_id": rng.choice(ids), "models": [LITE[0]], "top_k": 10} for _ in range(args.requests)]
                combined = [{"image_id": rng.choice(ids), "models": LITE, "method": "average", "top_k": 10} for _ in range(args.requests // 2)]
                asyncio.run(load(url, token, "/api/search", single[:50], 4))  # warm-up
                if cache:  # every id once, so that the measured requests are hits
                    every = [{"image_id": i, "models": [LITE[0]], "top_k": 10} for i in ids]
                    asyncio.run(load(url, token, "/api/search", every, 8))
                    asyncio.run(load(url, token, "/api/search_combined", [{**b, "image_id": i} for b in combined[:1] for i in ids], 8))
                for path, models, label, levels in (("/api/search", [LITE[0]], "search by id (lite0)", (1, 8, 32)),
                                                    ("/api/search_combined", LITE, "combined 3 models (average)", (1, 8))):
                    for clients in levels:
                        if use_wrk:
                            extra = ', "method": "average"' if len(models) > 1 else ""
                            res = load_wrk(url, token, path, models, clients, args.seconds, tmp, extra)
                        else:
                            bodies = single if len(models) == 1 else combined
                            res = asyncio.run(load(url, token, path, list(bodies), clients))
                        print(f"{label:<34}{'on' if cache else 'off':<6}{clients:>8}{res['rps']:>9.1f}{res['p50']:>9.1f}{res['p99']:>9.1f}", flush=True)
                if not cache:
                    splits = {"decode": [], "extract": [], "search": [], "total": []}
                    with httpx.Client(timeout=60) as c:
                        for i in rng.sample(range(1000), 30):
                            data = (ROOT / "image.orig" / f"{i}.jpg").read_bytes()
                            t = time.perf_counter()
                            r = c.post(url + "/api/search", files={"image": ("q.jpg", data, "image/jpeg")},
                                       data={"models": LITE[0]}, headers={"Authorization": f"Bearer {token}"})
                            splits["total"].append(time.perf_counter() - t)
                            tm = r.json()["timings"]
                            splits["decode"].append(tm["decode"])
                            splits["extract"].append(tm[f"extract:{LITE[0]}"])
                            splits["search"].append(tm[f"search:{LITE[0]}"])
                    med = {k: 1000 * statistics.median(v) for k, v in splits.items()}
                    print(f"upload search (lite0), median of 30: decode {med['decode']:.1f} ms, extract {med['extract']:.1f} ms, "
                          f"search {med['search']:.2f} ms, end-to-end {med['total']:.1f} ms", flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        if redis_proc:
            redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
