"""The pain.001.001.09 document for the bank: one CustomerCreditTransferInitiation per payout batch.

A pure function of the batch (center.ledger.payouts locks the rows and writes the file): the same
rows give the same bytes, which is what lets a lost file be re-created identically. Amounts are
integers of minor units turned into the schema's decimals without floats.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

from center.errors import ApiError
from paywire.money import AmountError, minor_exponent

PAIN_001_NS = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
# Field lengths from the pain.001.001.09 schema (Max34Text, Max140Text). The ids
# (MsgId, PmtInfId, EndToEndId: Max35Text) are ours and at most 24 characters.
MAX_ACCOUNT_CHARS = 34
MAX_NAME_CHARS = 140
NOT_PROVIDED = "NOTPROVIDED"
# Characters XML 1.0 cannot carry at all; ElementTree would write them and make the file unreadable.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class PayoutLine:
    payout_id: str
    store_name: str
    bank_account: str
    amount_minor: int


@dataclass(frozen=True)
class Batch:
    batch_id: str
    exported_at_ms: int
    lines: tuple[PayoutLine, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def build_pain001(batch: Batch, *, initiator: str, currency: str, debtor_account: str) -> bytes:
    """The CustomerCreditTransferInitiation for one batch: one PmtInf, one CdtTrfTxInf per payout."""
    # The default namespace as a plain attribute: no global ET.register_namespace state.
    root = ET.Element("Document", {"xmlns": PAIN_001_NS})
    initiation = _el(root, "CstmrCdtTrfInitn")
    header = _el(initiation, "GrpHdr")
    _el(header, "MsgId", batch.batch_id)
    _el(header, "CreDtTm", iso_datetime(batch.exported_at_ms))
    _el(header, "NbOfTxs", str(len(batch.lines)))
    _el(header, "CtrlSum", format_decimal_amount(batch.total_minor, currency))
    _el(_el(header, "InitgPty"), "Nm", xml_text(initiator, MAX_NAME_CHARS))
    _payment_information(
        initiation, batch, initiator=initiator, currency=currency, debtor_account=debtor_account
    )
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _payment_information(
    parent: ET.Element, batch: Batch, *, initiator: str, currency: str, debtor_account: str
) -> None:
    info = _el(parent, "PmtInf")
    _el(info, "PmtInfId", batch.batch_id)
    _el(info, "PmtMtd", "TRF")
    _el(info, "NbOfTxs", str(len(batch.lines)))
    _el(info, "CtrlSum", format_decimal_amount(batch.total_minor, currency))
    _el(_el(info, "ReqdExctnDt"), "Dt", iso_date(batch.exported_at_ms))
    _el(_el(info, "Dbtr"), "Nm", xml_text(initiator, MAX_NAME_CHARS))
    _other_id(_el(_el(info, "DbtrAcct"), "Id"), debtor_account)
    _other_id(_el(_el(info, "DbtrAgt"), "FinInstnId"), NOT_PROVIDED)
    for line in batch.lines:
        _credit_transfer(info, line, currency)


def _credit_transfer(parent: ET.Element, line: PayoutLine, currency: str) -> None:
    transfer = _el(parent, "CdtTrfTxInf")
    _el(_el(transfer, "PmtId"), "EndToEndId", line.payout_id)
    _el(_el(transfer, "Amt"), "InstdAmt", format_decimal_amount(line.amount_minor, currency), Ccy=currency)
    _el(_el(transfer, "Cdtr"), "Nm", line.store_name)
    _other_id(_el(_el(transfer, "CdtrAcct"), "Id"), line.bank_account)
    _el(_el(transfer, "RmtInf"), "Ustrd", f"tokenpay payout {line.payout_id}")


def _other_id(parent: ET.Element, identifier: str) -> None:
    _el(_el(parent, "Othr"), "Id", identifier)


def _el(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def format_decimal_amount(amount_minor: int, currency: str) -> str:
    """Integer minor units as the schema's decimal: 1250 EUR -> '12.50', 1500 JPY -> '1500'. No floats."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 0:
        raise ValueError("amounts in a payment file are non-negative integers of minor units")
    exponent = check_currency(currency)
    whole, fraction = divmod(amount_minor, 10**exponent)
    return f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)


def iso_datetime(at_ms: int) -> str:
    # Whole seconds in UTC with an explicit offset (xs:dateTime); from integer ms, no float arithmetic.
    return datetime.fromtimestamp(at_ms // 1000, tz=UTC).isoformat()


def iso_date(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms // 1000, tz=UTC).date().isoformat()


def xml_text(text: str, max_chars: int) -> str:
    """For names only (display text): drop what XML cannot hold, cut to the schema's length."""
    return _NOT_XML.sub("", text).strip()[:max_chars]


def valid_account(account: str | None) -> bool:
    return (
        bool(account)
        and account.strip() == account
        and len(account) <= MAX_ACCOUNT_CHARS
        and not _NOT_XML.search(account)
    )


def checked_debtor_account(account: str) -> str:
    if not valid_account(account):
        raise ApiError(
            "invalid_request",
            f"settlement account {account!r} must be 1-{MAX_ACCOUNT_CHARS} "
            "characters without surrounding spaces (pain.001 Max34Text)",
        )
    return account


def check_currency(currency: str) -> int:
    try:
        return minor_exponent(currency)
    except AmountError as error:
        raise ApiError("invalid_request", str(error)) from None
