"""Cold start of the local stack and the idle memory of each process.

Runs `stack.py up` several times on its own profile (`bench`, ports 274xx), with
dependencies already installed: the stack with the four services, and in the
same run the baseline of the infrastructure alone (`--no-services`). Prints the
median, min and max of each, then the resident memory (RSS) of every process
after 5 s idle. Stops everything it started.

    make bench            (or: .venv/bin/python tests/bench/startup.py --runs 5)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
ENV = {**os.environ, "TICKERTAP_PROFILE": "bench"}
STATE = ROOT / ".tickertap" / "bench"


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS of the process, PSS of it and all its descendants).

    Postgres forks a process per backend that all map the same shared buffers:
    summing their RSS would count those pages many times; PSS shares them out.
    """
    rss = 0
    pss = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            if p == pid:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids.extend(int(c) for c in children)
        except OSError:
            continue
    return rss, pss


def start(extra: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*STACK, "up", *extra], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def stop() -> None:
    subprocess.run([*STACK, "down"], env=ENV, check=True, stdout=subprocess.DEVNULL)


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<34} median {statistics.median(values):6.2f} s   "
        f"min {min(values):6.2f}   max {max(values):6.2f}   (n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args()
    full: list[float] = []
    infra: list[float] = []
    memory: dict[str, tuple[int, int]] = {}
    stop()
    for run in range(args.runs):
        infra.append(start(["--no-services"]))
        stop()
        full.append(start([]))
        if run == args.runs - 1:
            time.sleep(args.idle_s)
            info = json.loads((STATE / "stack.json").read_text())
            for part in ("postgres", "kafka", "vault"):
                if info[part]["pid"]:
                    memory[part] = memory_kib(info[part]["pid"])
            for name, svc in info["services"].items():
                memory[name] = memory_kib(svc["pid"])
        stop()
    print(f"cold start of `make up` (dependencies installed), {os.cpu_count()} cores:")
    print(summary("  whole stack with 4 services", full))
    print(summary("  baseline: infrastructure only", infra))
    print(f"idle memory after {args.idle_s:.0f} s (RSS of the process; PSS with its children):")
    for name, (rss_kib, pss_kib) in memory.items():
        print(f"  {name:<24} RSS {rss_kib / 1024:7.1f} MiB   PSS {pss_kib / 1024:7.1f} MiB")
    total = sum(pss for _, pss in memory.values())
    print(f"  {'total PSS':<24} {total / 1024:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
