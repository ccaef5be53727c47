"""The demo's upstream feed, started by `make run` (dev profile only): lists the simulated
symbols as instruments through the ingest API, then becomes `tickertap-feed`.

    python deploy/local/demo_feed.py --ingest-url http://127.0.0.1:25403 \
        --key-file .tickertap/dev/secrets/dev-signing-key.json \
        --bootstrap-servers 127.0.0.1:25492 [--symbols 10 --rate 20]

Listing is idempotent (201 created, 200 identical exists). It waits a bounded time for the
API; should the instruments still not be listed (an older ingest service without the
instrument API, say), the feed starts anyway and says so: its ticks are then dead-lettered
`unknown_symbol`, which the DLQ topic shows. The feed runs for `--duration-s` (a day by
default, restarted with the stack), then exits; the launcher does not stop the stack for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devkeys

from tickertap.marketdata.feed import default_symbols

LIST_TIMEOUT_S = 60.0  # for the instrument API to answer, all symbols together
REQUEST_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 1.0
TOKEN_TTL_S = 300
FEED_DURATION_S = 86_400.0


def list_instrument(url: str, token: str, body: dict[str, object]) -> int:
    """POST one instrument; returns the HTTP status (0 when the API cannot be reached)."""
    request = urllib.request.Request(  # noqa: S310 - loopback URL from the launcher
        f"{url}/v1/instruments",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def list_instruments(url: str, key_file: Path, symbols: int) -> list[str]:
    """List every simulated symbol; returns the problems (empty when all are listed)."""
    token = devkeys.mint(key_file, "demo-feed", roles=["admin"], ttl_s=TOKEN_TTL_S)
    deadline = time.monotonic() + LIST_TIMEOUT_S
    problems = []
    for spec in default_symbols(symbols):
        body = {"symbol": spec.symbol, "currency": "USD", "price_scale": spec.scale}
        while True:
            status = list_instrument(url, token, body)
            if status in (200, 201):
                break
            retry = status == 0 or status >= 500
            if not retry or time.monotonic() >= deadline:
                problems.append(f"{spec.symbol}: HTTP {status or 'unreachable'}")
                break
            time.sleep(RETRY_PAUSE_S)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-url", required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--rate", default="20")
    parser.add_argument("--duration-s", default=str(FEED_DURATION_S))
    args = parser.parse_args()

    problems = list_instruments(args.ingest_url, args.key_file, args.symbols)
    if problems:
        print(
            "demo feed: could not list every instrument (their ticks will be dead-lettered "
            f"unknown_symbol): {'; '.join(problems[:5])}",
            flush=True,
        )
    else:
        print(f"demo feed: {args.symbols} instruments listed", flush=True)
    feed = [
        sys.executable,
        "-m",
        "tickertap.marketdata.feed",
        "--bootstrap-servers",
        args.bootstrap_servers,
        "--symbols",
        str(args.symbols),
        "--rate",
        args.rate,
        "--duration-s",
        args.duration_s,
        "--progress-interval-s",
        "60",
    ]
    os.execv(sys.executable, feed)  # noqa: S606 - our own command; keeps the launcher's pid
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
