"""Overhead of DockerExecutor and ServerlessExecutor against the bare client calls, in the same run.

    python bench/bench_real_executors.py [--runs N]

1. DockerExecutor(image, command) against docker-py ``containers.run`` of the same command (create, start,
   wait, logs, remove), both on podman's Docker API service (started here, see testing.podman). Bar: <= 1.2x.
2. ServerlessExecutor (direct HTTP) against a bare ``httpx`` POST of the same payload to the same
   functions-framework function. Bar: <= 1.2x.
Runs alternate between the two sides so a change in machine speed hits both; the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from circuit_breaker.executors.docker import DockerExecutor
from circuit_breaker.executors.serverless import ServerlessExecutor
from circuit_breaker.testing.podman import IMAGE, PodmanEngine

FUNCTION = """
import functions_framework

@functions_framework.http
def echo(request):
    return {"n": (request.get_json(silent=True) or {}).get("n", 0) + 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_docker(runs: int) -> tuple[float, float]:
    import docker

    with PodmanEngine() as engine:
        client = docker.DockerClient(base_url=engine.docker_host)
        ours, bare = [], []
        for _ in range(runs):
            t = time.perf_counter()
            client.containers.run(IMAGE, ["echo", "hi"], remove=True, network_mode="none")
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            asyncio.run(DockerExecutor(image=IMAGE, command=["echo", "hi"], docker_host=engine.docker_host).execute())
            ours.append(time.perf_counter() - t)
        client.close()
    return statistics.median(ours), statistics.median(bare)


def bench_serverless(runs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "main.py"
        source.write_text(FUNCTION)
        port = free_port()
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "functions-framework"),
                "--target",
                "echo",
                "--source",
                str(source),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(100):
                try:
                    httpx.post(url, json={"n": 1}, timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)

            async def bare_call() -> None:
                async with httpx.AsyncClient() as client:
                    (await client.post(url, json={"n": 1}, timeout=10)).json()

            async def ours_call() -> None:
                await ServerlessExecutor(url=url, backend="http", mode="direct", payload={"n": 1}).execute()

            ours, bare = [], []
            for _ in range(runs):
                t = time.perf_counter()
                asyncio.run(bare_call())
                bare.append(time.perf_counter() - t)
                t = time.perf_counter()
                asyncio.run(ours_call())
                ours.append(time.perf_counter() - t)
        finally:
            server.terminate()
            server.wait(10)
    return statistics.median(ours), statistics.median(bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}, median of {args.runs} alternating runs")
    ours, bare = bench_docker(args.runs)
    print(
        f"docker:     ours {ours * 1000:7.1f} ms  bare docker-py {bare * 1000:7.1f} ms  ratio {ours / bare:.2f}x (bar <= 1.2x)"
    )
    ours, bare = bench_serverless(args.runs)
    print(
        f"serverless: ours {ours * 1000:7.1f} ms  bare httpx      {bare * 1000:7.1f} ms  ratio {ours / bare:.2f}x (bar <= 1.2x)"
    )


if __name__ == "__main__":
    main()
