"""The hot routes' plain-data bodies serialize to the very bytes of their models (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from pydantic_core import to_json
from test_domain import ASSETS, account, cmd, setup, trade_accounts

from tickertap.ledger import domain as d
from tickertap.ledger import schemas as s

SCALES = {code: asset.scale for code, asset in ASSETS.items()}
CREATED_AT = datetime(2026, 11, 26, 14, 0, 0, 123456, tzinfo=UTC)


def transfers() -> list[d.Transfer]:
    alice, bob = account("USD"), account("USD")
    accounts, balances = setup(alice, bob, balances={alice.id: Decimal("10.00")})
    plain = d.post(cmd((alice, "-2.5"), (bob, "2.50")), accounts, ASSETS, balances)
    acc = trade_accounts()
    accounts, balances = setup(
        acc.cash, acc.securities, acc.omnibus, acc.fees, acc.custody,
        balances={acc.cash.id: Decimal(10_000)},
    )  # fmt: skip
    buy = d.trade(
        uuid.uuid4(),
        d.Side.BUY,
        Decimal(3),
        Decimal("187.1200"),
        acc,
        ASSETS,
        d.FeeSchedule(rate_bps=Decimal(5), minimum=Decimal("1.00")),
        {"order": "42"},
    )
    traded = d.post(buy, accounts, ASSETS, balances)
    balances.update({p.account_id: p.balance_after for p in traded.postings})
    reversal = d.reversal(traded, uuid.uuid4(), {"why": "test"})
    return [plain, traded, d.post(reversal, accounts, ASSETS, balances)]


def test_transfer_body_is_the_transfer_public_json():
    for transfer in transfers():
        model = s.TransferPublic.of(transfer, CREATED_AT, SCALES)
        assert to_json(s.transfer_body(transfer, CREATED_AT, SCALES)) == (
            model.model_dump_json().encode()
        )


def test_batch_bodies_are_the_batch_result_json():
    items = transfers()
    model = s.BatchResult(
        results=[
            s.BatchItemResult(
                index=0, status=201, transfer=s.TransferPublic.of(items[0], CREATED_AT, SCALES)
            ),
            s.BatchItemResult(index=1, status=409, code="insufficient_funds", detail="no"),
        ]
    )
    body = {
        "results": [
            s.batch_item_body(0, 201, s.transfer_body(items[0], CREATED_AT, SCALES)),
            s.batch_item_body(1, 409, code="insufficient_funds", detail="no"),
        ]
    }
    assert to_json(body) == model.model_dump_json().encode()
