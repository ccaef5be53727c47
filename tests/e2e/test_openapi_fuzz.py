"""Property-based fuzzing of every service's published OpenAPI document with schemathesis,
an independent implementation: whatever a client sends, within the schema or around it,
no answer is a 5xx.

The running stack's services are called over HTTP, as a customer would call them (a dev
customer token: the routes an attacker reaches first; admin routes answer 403 to it, and
the unauthenticated paths are exercised by the missing and malformed tokens schemathesis
generates on its own). Bounded: `EXAMPLES_MAX` cases per operation.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.stack

EXAMPLES_MAX = 20
FUZZ = settings(
    max_examples=EXAMPLES_MAX,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure replays
    suppress_health_check=list(HealthCheck),
    database=None,
)


SERVICES = ("auth", "ledger", "market-data-ingest", "portfolio-calculation")


@pytest.fixture(scope="module")
def customer(mint_token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(str(uuid.uuid4()), ('customer',))}"}


@pytest.mark.parametrize("service", SERVICES)
def test_no_operation_answers_5xx(stack: Any, customer: dict[str, str], service: str) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.service_url(service)}/openapi.json")
    failures: dict[str, str] = {}
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"{service} publishes no operation"
    for operation, mode in itertools.product(operations, GenerationMode):

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            response = case.call_and_validate(
                headers=customer, checks=[not_a_server_error], timeout=10
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            call()
        except Unsatisfiable:  # nothing to break on purpose (an operation without inputs)
            assert mode is GenerationMode.NEGATIVE, operation.path
        except Exception as exc:  # every operation is fuzzed; all failures are reported
            name = f"{operation.method.upper()} {operation.path} ({mode.value})"
            failures[name] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{op}: {why}" for op, why in failures.items())
    print(f"{service}: {len(operations)} operations, answers by status: {sorted(statuses.items())}")
    assert sum(statuses.values()) >= len(operations)  # really called
