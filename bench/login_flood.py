"""50 wrong passwords at once against `gouache web`: the server's CPU seconds, how many
passwords it hashed, and the latency of an unrelated page (GET /login) meanwhile.

It starts `python -m app.cli web` from ``--repo`` (default: this checkout; point it at an
export of an older commit to measure "before") on a fresh database, signs one account up,
then fires ``--n`` simultaneous logins with a wrong password, while another thread fetches
/login every 50 ms. Extra GOUACHE_* settings go to the server with ``--set NAME=VALUE``
(e.g. ``--set LOGIN_FAILURES_PER_ACCOUNT=0 --set LOGIN_FAILURES_PER_IP=0`` to see the
hashing gate alone, as under an attack from many addresses on many accounts).

    .venv/bin/python bench/login_flood.py [--repo DIR] [--n 50] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a long enough passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(ROOT))
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="gouache-flood-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOUACHE_")}
    env.update(GOUACHE_DATA_DIR=str(data), PYTHONPATH=args.repo, GOUACHE_TEST_CHECKOUT="false")
    for item in args.set:
        name, _, value = item.partition("=")
        env[f"GOUACHE_{name.upper()}"] = value
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=args.repo, env=env, check=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port)],
        cwd=args.repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with httpx.Client(base_url=url) as owner:
            owner.get("/login")
            csrf = owner.cookies["gouache_csrf"]
            form = {"email": "ada@example.com", "password": PASSWORD, "csrf_token": csrf}
            signed_up = owner.post("/signup", data=form)
            assert signed_up.status_code in (200, 303), signed_up.status_code

        idle = [measure(url) for _ in range(10)]
        codes: Counter[int] = Counter()
        latencies: list[float] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                latencies.append(measure(url))
                time.sleep(0.05)

        def guess(barrier: threading.Barrier) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                c.get("/login")
                barrier.wait()
                csrf = c.cookies["gouache_csrf"]
                wrong = {"email": "ada@example.com", "password": "wrong password!", "csrf_token": csrf}
                response = c.post("/login", data=wrong)
                codes[response.status_code] += 1

        barrier = threading.Barrier(args.n)
        threads = [threading.Thread(target=guess, args=(barrier,)) for _ in range(args.n)]
        watcher = threading.Thread(target=watch)
        cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
        for t in threads:
            t.start()
        watcher.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - started, cpu_seconds(server.pid) - cpu_before
        done.set()
        watcher.join()
    finally:
        server.terminate()
        server.wait(timeout=20)

    print(f"repo {args.repo}  settings {' '.join(args.set) or '(defaults)'}")
    print(f"{args.n} simultaneous wrong logins: answers {dict(sorted(codes.items()))}, {wall:.1f} s wall")
    print(f"server CPU: {cpu:.1f} s")
    print(
        f"GET /login meanwhile: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms ({len(latencies)} requests); idle median "
        f"{statistics.median(idle) * 1000:.0f} ms"
    )


def measure(url: str) -> float:
    started = time.perf_counter()
    httpx.get(f"{url}/login", timeout=120)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
