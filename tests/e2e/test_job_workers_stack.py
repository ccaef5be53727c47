"""The local stack's report job workers: one with `make run` (dev), none in the test and
bench stacks (the job tests start their own, and a worker of the stack would take their
jobs), as many as TICKERTAP_JOB_WORKERS asks within its bound."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

from config import StackConfig  # noqa: E402
from stack import JOB_WORKERS_MAX, job_worker_count  # noqa: E402


def config(profile: str) -> StackConfig:
    return StackConfig(
        profile=profile,
        state_dir=Path("/nonexistent"),
        port_base=1000,
        pg_admin_url=None,
        kafka_bootstrap_servers=None,
        vault_addr=None,
        vault_token=None,
    )


def test_one_worker_in_dev_none_in_test_and_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKERTAP_JOB_WORKERS", raising=False)
    assert [job_worker_count(config(p)) for p in ("dev", "test", "bench")] == [1, 0, 0]


def test_the_count_is_a_bounded_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKERTAP_JOB_WORKERS", "3")
    assert job_worker_count(config("dev")) == 3
    monkeypatch.setenv("TICKERTAP_JOB_WORKERS", str(JOB_WORKERS_MAX + 1))
    with pytest.raises(SystemExit):
        job_worker_count(config("dev"))
