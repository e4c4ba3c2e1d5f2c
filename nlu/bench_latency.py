#!/usr/bin/env python
"""Time POST /model/parse on a real `rasa run` server (loopback only).

    cd nlu && ../.rasa-venv/bin/python bench_latency.py --model models/hailong-nlu.tar.gz

Starts `rasa run --enable-api --auth-token X -p 5005 -i 127.0.0.1 --model MODEL`, waits for
/status, sends N sequential parse requests (texts from tests/heldout.yml, cycled), prints
startup time and latency percentiles, and stops the server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import unicodedata
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("- ") and not s.startswith("- intent:"):
            texts.append(unicodedata.normalize("NFC", s[2:]))
    return texts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HERE / "models" / "hailong-nlu.tar.gz"))
    ap.add_argument("--rasa", default=str(HERE.parent / ".rasa-venv" / "bin" / "rasa"))
    ap.add_argument("--port", type=int, default=5005)
    ap.add_argument("--token", default="X")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--texts", default=str(HERE / "tests" / "heldout.yml"))
    ap.add_argument("--startup-timeout", type=float, default=180)
    args = ap.parse_args()

    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        RASA_TELEMETRY_ENABLED="false",
        SQLALCHEMY_SILENCE_UBER_WARNING="1",
    )
    base = f"http://127.0.0.1:{args.port}"
    log = open(HERE / "reports" / "bench_server.log", "w")
    t0 = time.time()
    proc = subprocess.Popen(
        [
            args.rasa,
            "run",
            "--enable-api",
            "--auth-token",
            args.token,
            "-p",
            str(args.port),
            "-i",
            "127.0.0.1",
            "--model",
            args.model,
        ],
        cwd=HERE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while True:
            if proc.poll() is not None:
                print("server exited early; see reports/bench_server.log", file=sys.stderr)
                return 1
            try:
                with urllib.request.urlopen(f"{base}/status?token={args.token}", timeout=2) as r:
                    if json.load(r).get("model_file"):
                        break
            except Exception:
                pass
            if time.time() - t0 > args.startup_timeout:
                print("server did not come up in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        startup = time.time() - t0

        texts = load_texts(Path(args.texts))
        lat = []
        sample = None
        for i in range(args.n):
            body = json.dumps({"text": texts[i % len(texts)]}).encode()
            req = urllib.request.Request(
                f"{base}/model/parse?token={args.token}",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            s = time.perf_counter()
            with urllib.request.urlopen(req, timeout=10) as r:
                res = json.load(r)
            lat.append((time.perf_counter() - s) * 1000)
            sample = sample or res
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
        out = {
            "n": len(lat),
            "startup_s": round(startup, 1),
            "mean_ms": round(statistics.mean(lat), 1),
            "p50_ms": round(q(0.50), 1),
            "p95_ms": round(q(0.95), 1),
            "p99_ms": round(q(0.99), 1),
            "max_ms": round(lat[-1], 1),
        }
        print(json.dumps(out))
        print(
            "sample response intent:",
            json.dumps(sample["intent"], ensure_ascii=False),
            "ranking length:",
            len(sample.get("intent_ranking", [])),
        )
        (HERE / "reports" / "latency.json").write_text(json.dumps(out, indent=1))
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
