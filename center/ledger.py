"""Double-entry ledger: every movement debits one account and credits another.

Balances are credits minus debits. Funding accounts go negative by what came
in from outside; `payouts:settled` grows by what went out to banks; so the sum
over all accounts is zero at all times. Member and store accounts never go
below zero: the debit is a conditional update (`balance >= amount`) backed by
a CHECK constraint. Both rows of a transfer are locked in a fixed order
(sorted ids), so concurrent transfers cannot deadlock each other.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, insert, select, update

from center.db import accounts, payments, refunds, transfers
from center.errors import Refusal
from paywire.canonical import MAX_SAFE_INTEGER

PAYOUTS_PENDING = "payouts:pending"
PAYOUTS_SETTLED = "payouts:settled"
FUNDING_PREFIX = "funding:"
PROTECTED_KINDS = ("member", "store")


def party_account(party_id: str) -> str:
    return f"party:{party_id}"


def funding_account(method: str) -> str:
    return FUNDING_PREFIX + method


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def open_party_account(conn: Connection, party_id: str, role: str, now_ms: int) -> None:
    conn.execute(insert(accounts).values(id=party_account(party_id), kind=role, party_id=party_id, balance_minor=0,
                                         created_at_ms=now_ms))


def balance_of(conn: Connection, account_id: str) -> int:
    return conn.execute(select(accounts.c.balance_minor).where(accounts.c.id == account_id)).scalar_one()


def move(conn: Connection, *, debit: str, credit: str, amount_minor: int, kind: str, ref: str, now_ms: int) -> str:
    """Apply one transfer inside the caller's transaction; returns its id.

    Raises Refusal('insufficient_funds') when a member or store account
    would go below zero; nothing is written then.
    """
    assert amount_minor > 0 and debit != credit
    for account_id in sorted((debit, credit)):
        if account_id == debit:
            _debit(conn, debit, amount_minor)
        else:
            _credit(conn, credit, amount_minor)
    transfer_id = new_id("T")
    conn.execute(insert(transfers).values(id=transfer_id, debit_account=debit, credit_account=credit,
                                          amount_minor=amount_minor, kind=kind, ref=ref, created_at_ms=now_ms))
    return transfer_id


def _debit(conn: Connection, account_id: str, amount_minor: int) -> None:
    covered = (accounts.c.kind.not_in(PROTECTED_KINDS)) | (accounts.c.balance_minor >= amount_minor)
    result = conn.execute(update(accounts).where(accounts.c.id == account_id, covered)
                          .values(balance_minor=accounts.c.balance_minor - amount_minor))
    if result.rowcount == 1:
        return
    exists = conn.execute(select(accounts.c.balance_minor).where(accounts.c.id == account_id)).first()
    if exists is None:
        raise AssertionError(f"account {account_id} does not exist")
    raise Refusal("insufficient_funds", "the balance does not cover this amount; nothing was changed")


def _credit(conn: Connection, account_id: str, amount_minor: int) -> None:
    result = conn.execute(update(accounts).where(accounts.c.id == account_id,
                                                 accounts.c.balance_minor <= MAX_SAFE_INTEGER - amount_minor)
                          .values(balance_minor=accounts.c.balance_minor + amount_minor))
    if result.rowcount != 1:
        if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
            raise AssertionError(f"account {account_id} does not exist")
        raise Refusal("balance_limit", "this credit would take the balance beyond what receipts can state")


@dataclass
class LedgerReport:
    accounts: int = 0
    transfers: int = 0
    total_minor: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "accounts": self.accounts, "transfers": self.transfers,
                "total_minor": self.total_minor, "problems": self.problems}


def check_ledger(conn: Connection, *, max_problems: int = 100) -> LedgerReport:
    """Recompute every balance from the transfers and compare; check the sum is zero."""
    report = LedgerReport()
    debits = dict(conn.execute(select(transfers.c.debit_account, func.sum(transfers.c.amount_minor))
                               .group_by(transfers.c.debit_account)).all())
    credits = dict(conn.execute(select(transfers.c.credit_account, func.sum(transfers.c.amount_minor))
                                .group_by(transfers.c.credit_account)).all())
    report.transfers = conn.execute(select(func.count()).select_from(transfers)).scalar_one()
    for row in conn.execute(select(accounts.c.id, accounts.c.kind, accounts.c.balance_minor).order_by(accounts.c.id)):
        report.accounts += 1
        report.total_minor += row.balance_minor
        expected = int(credits.get(row.id, 0)) - int(debits.get(row.id, 0))
        if expected != row.balance_minor:
            report.problems.append(f"{row.id}: balance {row.balance_minor} but transfers give {expected}")
        if row.kind in PROTECTED_KINDS and row.balance_minor < 0:
            report.problems.append(f"{row.id}: negative balance {row.balance_minor}")
    unknown = (set(debits) | set(credits)) - {r.id for r in conn.execute(select(accounts.c.id))}
    report.problems.extend(f"{a}: transfers name an account that does not exist" for a in sorted(unknown))
    if report.total_minor != 0:
        report.problems.append(f"the balances sum to {report.total_minor}, not zero")
    report.problems.extend(_refund_problems(conn))
    del report.problems[max_problems:]
    return report


def _refund_problems(conn: Connection) -> list[str]:
    refunded = dict(conn.execute(select(refunds.c.payment_id, func.sum(refunds.c.amount_minor))
                                 .group_by(refunds.c.payment_id)).all())
    problems = []
    for row in conn.execute(select(payments.c.id, payments.c.amount_minor, payments.c.refunded_minor)
                            .where(payments.c.refunded_minor > 0)):
        if int(refunded.get(row.id, 0)) != row.refunded_minor:
            problems.append(f"payment {row.id}: refunded_minor {row.refunded_minor} but refunds sum to "
                            f"{int(refunded.get(row.id, 0))}")
    return problems
