"""Money commands: top-up, pay, balance, notices, payout, refund.

Long because the money commands (top-up, pay, balance, a store's notices, payout, refund) share one
send step (`_send`) and the pay command's safety rules (the prompt, the look-alike and repeat
checks) sit beside the command they guard; command modules may not import each other."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer

from hostkit.cli import CliError, emit
from hostkit.shown import quoted
from paywire.errors import WireError
from paywire.fields import FUNDING_METHODS, PARTY_ID_PATTERN
from paywire.messages import BALANCE, NOTICES, PAY, PAYOUT, REFUND, TOPUP
from paywire.money import format_amount
from paywire.text import check_text_chars
from token_wallet.cli.command_index import app
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
    ask_confirmation,
    choice,
    deliver_checked,
    format_when,
    learn_currency,
    online,
    print_outcome,
    read_amount,
    sign_with_pin,
    unlock_wallet,
)
from token_wallet.cli.paging import PageLimit, checked_limit, page_info
from token_wallet.vault_records import payment_order_ref
from token_wallet.wallet import MAX_NOTICES_PER_FETCH
from tokens import DEFAULT_CARD_TIMEOUT_S

if TYPE_CHECKING:
    from rich.console import Group

MAX_NOTICE_FETCHES = 10
# A member or store id inside a name or order reference: worth a warning in the pay prompt.
PARTY_ID_IN_TEXT = re.compile(r"[MS]-[0-9a-f]{16}")


@app.command()
def topup(
    amount: Annotated[
        str, typer.Argument(help="Amount in the center's currency, e.g. 5000 (JPY) or 12.50 (EUR)")
    ],
    method: Annotated[str, typer.Option(help="credit, bank, postal or cash")],
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Ask to load prepaid value; it is credited once the funding is confirmed."""
    choice(method, {m: m for m in FUNDING_METHODS}, "--method")
    _send(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "member",
        TOPUP,
        lambda currency: {
            "amount_minor": read_amount(amount, currency),
            "currency": currency,
            "method": method,
        },
        lambda r, currency: (
            f"top-up {r['topup_id']} of {format_amount(r['amount_minor'], currency)} "
            f"by {r['method']} is {r['status']}: it is credited once the funding is confirmed"
        ),
    )


def _send(signing: Signing, as_json: bool, role: str, msg_type: str, body_for, describe) -> None:
    """A money request: the enrolled wallet learns the currency, signs the body made in it (password
    B), delivers it and prints `describe(result, currency)`."""
    with signing.open_wallet() as wallet:
        wallet.require_enrolled(role)
        currency = learn_currency(wallet)
        outcome = signing.sign_and_deliver(wallet, msg_type, body_for(currency))
    print_outcome(as_json, outcome, lambda result: describe(result, currency))


@app.command()
def pay(
    store: Annotated[str, typer.Option(help="The store's id (S-...)")],
    amount: Annotated[str, typer.Option(help="Amount in the center's currency")],
    order: Annotated[str, typer.Option(help="The store's order reference")],
    yes: Annotated[
        bool, typer.Option("--yes", metavar="", help="Skip the confirmation question (not password B)")
    ] = False,
    allow_repeat: Annotated[
        bool,
        typer.Option(
            "--allow-repeat",
            metavar="",
            help="Pay an order this wallet (or the center) has already seen paid",
        ),
    ] = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Pay a store from the prepaid balance with a payment signed on the token."""
    if not order.strip():  # before any password or prompt: an order says what the payment is for
        raise CliError("--order must not be empty: give the store's order reference; nothing was signed")
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        wallet.require_enrolled("member")
        currency = learn_currency(wallet)
        amount_minor = read_amount(amount, currency)
        _visible_text(order, "--order")
        payee = _payee(wallet, _store_id(store))
        body = {
            "payee": store,
            "payee_name": payee["name"],
            "amount_minor": amount_minor,
            "currency": currency,
            "order_ref": order,
        }
        earlier = wallet.doc["history"].find(payment_order_ref(store, order))
        _confirm_payment(payee, format_amount(amount_minor, currency), order, yes, earlier, allow_repeat)
        if earlier is not None or allow_repeat:
            body["repeat"] = True  # confirmed: the center pays an order again only when told so
        outcome = signing.sign_and_deliver(wallet, PAY, body)
    print_outcome(
        as_json,
        outcome,
        lambda r: (
            f"paid {format_amount(r['amount_minor'], currency)} to store "
            f"{r['store_id']} {quoted(r['store_name'])}: payment {r['payment_id']}, "
            f"balance {format_amount(r['balance_minor'], currency)}"
        ),
    )


def _store_id(store: str) -> str:
    if not PARTY_ID_PATTERN.fullmatch(store) or not store.startswith("S-"):
        raise CliError(
            f"--store {quoted(store, 40)} is not a store id: S- and 16 hex digits, as the store shows it"
        )
    return store


def _visible_text(text: str, what: str) -> None:
    """Refuse, before any prompt, what the wire would refuse to sign (paywire.text.check_text_chars)."""
    try:
        check_text_chars(text, what)
    except WireError as error:
        raise CliError(f"{error.message}; nothing was signed") from None


def _payee(wallet, store_id: str) -> dict:
    """The store as the center registered it: name, and whether that name is flagged as a look-alike."""

    def look_up() -> dict:
        with wallet.client() as client:
            return client.get_json(f"/v1/stores/{store_id}")

    info = online(look_up, "look up the store")
    if info.get("store_id") != store_id or not info.get("active") or not isinstance(info.get("name"), str):
        raise CliError(f"store {store_id} is not an active store at this center; nothing was signed")
    _visible_text(
        info["name"], f"store {store_id}'s registered name"
    )  # e.g. a store enrolled before the rule
    resembles = info.get("resembles")
    return {
        "store_id": store_id,
        "name": info["name"],
        "name_flagged": info.get("name_flagged") is True,
        "resembles": resembles
        if isinstance(resembles, str) and PARTY_ID_PATTERN.fullmatch(resembles)
        else None,
    }


def _confirm_payment(
    payee: dict, money: str, order: str, yes: bool, earlier: dict | None, allow_repeat: bool
) -> None:
    """Ask before signing; a flagged look-alike name warns, and refuses --yes until an operator clears
    it; an order this wallet paid before warns, and refuses --yes without --allow-repeat."""
    block, warnings = payment_block(payee, money, order)
    if earlier is not None:
        paid = earlier["details"]
        warnings += (
            f"this wallet already paid order {quoted(order)} to store {payee['store_id']} on "
            f"{format_when(earlier['at_ms'])} UTC: payment {paid.get('payment_id')}, "
            f"{format_amount(paid['amount_minor'], paid['currency'])}",
        )
        if yes and not allow_repeat:
            ask_confirmation(block, True, warnings)
            raise CliError(
                f"order {quoted(order)} was already paid to store {payee['store_id']} "
                f"(payment {paid.get('payment_id')}): add --allow-repeat to pay it again; nothing was signed"
            )
    if payee["name_flagged"] and yes:
        ask_confirmation(block, True, warnings)
        raise CliError(
            f"store {payee['store_id']} has a flagged look-alike name: --yes is refused until an operator "
            "clears it; pay without --yes to decide yourself; nothing was signed"
        )
    ask_confirmation(block, yes, warnings)


def payment_block(payee: dict, money: str, order: str) -> tuple[Group, tuple[str, ...]]:
    """The pay prompt, in a layout no name can imitate (issue 17): a grid whose left column holds only
    the wallet's own labels and whose first row is the store id the money goes to; the name and order
    (the store's words) only in the right column, in quotes they cannot close, escaped, cut when long.
    A value that wraps continues in the right column, under no label."""
    from rich.console import Group
    from rich.table import Table

    store_id = payee["store_id"]
    grid = Table.grid(padding=(0, 2), pad_edge=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("store id", f"{store_id}   <- the money goes to this store id only")
    grid.add_row("name", f"{quoted(payee['name'])}   (as this store registered it at the center)")
    grid.add_row("order", quoted(order))
    warnings = []
    other_ids = sorted(set(PARTY_ID_IN_TEXT.findall(payee["name"] + " " + order)) - {store_id})
    if other_ids:
        warnings.append(f"the name or order mentions {', '.join(other_ids)}, but the payee is {store_id}")
    if payee["name_flagged"]:
        warnings.append(
            f"the center flagged this store's name: it looks like the name of store "
            f"{payee['resembles'] or 'another store'}, and no operator has cleared it; "
            f"check the store id {store_id} with the store before paying"
        )
    return Group(f"Pay {money} to this store? Password B signs it next.", grid), tuple(warnings)


@app.command()
def balance(
    offline: Annotated[
        bool, typer.Option("--offline", metavar="", help="Show the last known balance (password A only)")
    ] = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Ask the center for the balance (a signed query), or show the last known one."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        wallet.require_enrolled()
        currency = wallet.currency if offline else learn_currency(wallet)
        if not offline:
            outcome = signing.sign_and_deliver(wallet, BALANCE, {})
            if outcome[0] != "delivered":
                raise CliError(
                    "the center could not be reached; the query waits in the outbox "
                    "(use --offline for the last known balance)"
                )
        doc = wallet.doc
    pending = [{"topup_id": k, **v} for k, v in doc["topups"].items() if v["status"] == "pending"]
    document = {
        "balance_minor": doc["balance_minor"],
        "currency": currency,
        "member_id": doc["member_id"],
        "pending_topups": pending,
        "source": "vault" if offline else "center",
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"balance: {format_amount(doc['balance_minor'] or 0, currency or 'JPY')}"
            + (" (last known)" if offline else "")
            + "".join(
                f"\n  pending top-up {t['topup_id']}: {format_amount(t['amount_minor'], currency)} "
                f"by {t['method']}"
                for t in pending
            )
        ),
    )


NOTICES_PAGE_DEFAULT = 100


@app.command()
def notices(
    home: Home = None,
    as_json: JsonFlag = False,
    stored: Annotated[
        bool,
        typer.Option(
            "--stored", metavar="", help="Show the notices kept here, fetch nothing (password A only)"
        ),
    ] = False,
    limit: PageLimit = NOTICES_PAGE_DEFAULT,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Fetch the store's new payment notices, each checked against the center's signature.

    Shows the newest notices kept; with --stored, only shows the kept ones (no fetch)."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    limit = checked_limit(limit)
    if stored:
        with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
            wallet.require_enrolled("store")
            page = wallet.doc["notices"].page(limit)
        new, state = 0, "stored"
    else:
        with signing.open_wallet() as wallet:
            new, state = _fetch_notices(wallet, signing)
            page = wallet.doc["notices"].page(limit)
    shown = [item["notice"] for item in page.items]
    document = {"notices": shown, "new": new, "status": state, "page": page_info(page, limit, None)}

    def render(out) -> None:
        from rich.table import Table  # only for people: `--json` never loads Rich's tables

        title = "payment notices kept here" if stored else f"payment notices ({new} new)"
        table = Table(title=f"{title}, all verified against the center's key")
        for column in ("payment", "buyer", "amount", "order", "paid (UTC)"):
            table.add_column(column)
        for n in shown:
            table.add_row(
                n["payment_id"],
                n["buyer_id"],
                format_amount(n["amount_minor"], n["currency"]),
                n["order_ref"],
                format_when(n["paid_at_ms"]),
            )
        out.print(table)
        if page.first_index:
            out.print(f"the newest {len(shown)} of {page.total}; --limit shows more")
        if state == "queued":
            out.print("the center could not be reached; run `wallet sync` later")

    emit(as_json, document, render)


def _fetch_notices(wallet, signing: Signing) -> tuple[int, str]:
    """Ask the center for notices after the cursor until a short page: (how many new, last state)."""
    wallet.require_enrolled("store")
    before = len(wallet.doc["notices"])
    token, pin = signing.token_and_pin(wallet)
    for _ in range(MAX_NOTICE_FETCHES):
        body = {"after": wallet.doc["notices_cursor"], "limit": MAX_NOTICES_PER_FETCH}
        entry = sign_with_pin(wallet, token, pin, NOTICES, body)
        state, result = deliver_checked(wallet, entry)
        if state != "delivered" or result["count"] < MAX_NOTICES_PER_FETCH:
            break
    return len(wallet.doc["notices"]) - before, state


@app.command()
def payout(
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Claim the store's whole balance as a payout to its bank account."""
    _send(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "store",
        PAYOUT,
        lambda currency: {"currency": currency},
        lambda r, currency: (
            f"payout {r['payout_id']} of {format_amount(r['amount_minor'], currency)} "
            f"to {r['bank_account']} is {r['status']}"
        ),
    )


@app.command()
def refund(
    payment_id: Annotated[str, typer.Argument(help="The payment to refund (P-...)")],
    amount: Annotated[str | None, typer.Option(help="Part to refund (default: all not yet refunded)")] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Return money of a payment to the buyer (stores only; never more than was paid)."""
    _send(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "store",
        REFUND,
        lambda currency: {
            "payment_id": payment_id,
            "amount_minor": read_amount(amount, currency) if amount else None,
            "currency": currency,
        },
        lambda r, currency: (
            f"refunded {format_amount(r['amount_minor'], currency)} of payment "
            f"{r['payment_id']} to {r['buyer_id']} (refund {r['refund_id']})"
        ),
    )
