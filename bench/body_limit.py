"""An oversized request body: how long the web process spends on it and how much it grows.

Starts uvicorn on a temp data dir (the embedded defaults), signs up, then sends one
JSON body of ``--mb`` megabytes to ``POST /api/v1/generations`` (a list of small
numbers, the costliest JSON to parse per byte), once with a Content-Length and once
chunked (no Content-Length). Prints the status, the seconds until the answer, and the
web process's peak RSS (VmHWM) before and after.

    .venv/bin/python bench/body_limit.py            # 150 MB, as in issue 13
    .venv/bin/python bench/body_limit.py --mb 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from bench.running import service_env, signed_up, start_web  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def body(mb: int) -> bytes:
    n = mb * 1024 * 1024 // 2  # "0," per element
    return b'{"prompt": "x", "pad": [' + b"0," * (n - 1) + b"0]}"


def chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def send(client: httpx.Client, data: bytes, chunked: bool) -> tuple[int, float, str]:
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    try:
        content = chunks(data) if chunked else data
        response = client.post("/api/v1/generations", content=content, headers=headers, timeout=300)
        status, text = response.status_code, response.text[:120]
    except httpx.HTTPError as exc:  # the server may close the connection mid-upload
        status, text = 0, f"{type(exc).__name__}: {exc}"[:120]
    return status, time.perf_counter() - start, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=150)
    args = parser.parse_args()
    data = body(args.mb)
    with tempfile.TemporaryDirectory(prefix="gouache-bench-") as tmp:
        env = service_env(Path(tmp) / "data")
        upgrade(Settings(_env_file=None, data_dir=Path(tmp) / "data"))  # type: ignore[call-arg]
        web, base = start_web(env, Path(tmp) / "web.log")
        try:
            client = signed_up(base)
            for chunked in (False, True):
                before = peak_rss_mb(web.pid)
                status, seconds, text = send(client, data, chunked)
                web.check_alive()
                after = peak_rss_mb(web.pid)
                how = "chunked       " if chunked else "Content-Length"
                print(
                    f"{args.mb} MB JSON, {how}: HTTP {status} in {seconds:.2f} s; "
                    f"web peak RSS {before:.0f} -> {after:.0f} MB (+{after - before:.0f}); {text!r}"
                )
        finally:
            web.stop()


if __name__ == "__main__":
    main()
