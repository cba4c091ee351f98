"""The operator console in headless Chromium, against a real `center serve` over HTTPS,
with real wallet processes on SoftHSM tokens, on SQLite and PostgreSQL.

It checks what a person would see: the login code and the command to run, the
operator's name once `wallet console-login CODE` approved it, a member found by
name and their statement, a top-up confirmed with the operator's token by running the
command the page shows (the page then shows the result, the row leaves the pending
list, the balance rises), the three charts drawn with one bar or point per figure, a CSV
whose rows are the table's; and that a member key cannot log in and that no session,
an auditor's or an operator's, can decide from the page.

Chromium is Debian's (`apt-get install chromium`, in scripts/setup.sh); Playwright
drives it and never downloads a browser of its own. The center's certificate is
self-signed: the wallet pins it, the browser context here ignores it (this test is
about the page, not about TLS).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from support import CenterProcess, require, run_cli
from test_wallet_e2e import WalletUser

from center.storage.db import normalise_url, topups

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `test` extra is not installed: the fixture below says so
    expect = sync_playwright = None

CHROMIUM = os.environ.get("TOKENPAY_CHROMIUM", "/usr/bin/chromium")
CODE = re.compile(r"^[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}$")
WAIT_MS = 20_000
STATS_DAYS = 30


@pytest.fixture(scope="module")
def chromium():
    require("chromium (Debian package `chromium`)", Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK))
    require("the Python package playwright (pip install -e '.[test]')", sync_playwright is not None)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        # --no-sandbox: tests run as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium):
    contexts = []

    def open_page(center: CenterProcess):
        context = chromium.new_context(ignore_https_errors=True, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Refused requests (401 before login, the forged 403) are logged as "Failed to load resource":
        # expected.
        page.on(
            "console",
            lambda message: (
                errors.append(message.text)
                if message.type == "error" and not message.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.script_errors = errors  # what the page's console said went wrong (CSP violations included)
        page.goto(f"{center.url}/console")
        return page

    yield open_page
    for context in contexts:
        context.close()


def snap(page, name: str) -> None:
    """With TOKENPAY_CONSOLE_SCREENSHOTS=DIR, keep a screenshot of what the test saw (for people, not
    asserts)."""
    folder = os.environ.get("TOKENPAY_CONSOLE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def login_code(page) -> str:
    # expect() polls from Playwright's side: wait_for_function would need eval, which the page's CSP forbids.
    expect(page.locator("#challenge-code")).to_have_text(CODE, timeout=WAIT_MS)
    command = page.locator("#login-command").inner_text().strip()
    code = command.removeprefix("wallet console-login ")
    assert command == f"wallet console-login {code}" and CODE.fullmatch(code), command
    return code


def add_operator(
    tmp_path: Path, make_softhsm_token, center: CenterProcess, role: str, name: str
) -> WalletUser:
    """An operator's own token and wallet, added by the center's administrator, attached to the center."""
    user = WalletUser(tmp_path, make_softhsm_token, f"{role}-{len(name)}")
    user.init()
    pem_file = tmp_path / f"{role}.pem"
    pem_file.write_text(user.json("export-public-key")["public_key_pem"])
    added = run_cli(
        "center",
        [
            "operator",
            "add",
            "--data-dir",
            str(center.data_dir),
            "--public-key",
            str(pem_file),
            "--role",
            role,
            "--name",
            name,
            "--json",
        ],
    )
    assert added.returncode == 0, added.stderr
    attached = user.json("operator", "attach", "--center", center.url, "--center-cert", str(center.cert))
    assert attached["role"] == role, attached
    return user


def enroll_member(tmp_path: Path, make_softhsm_token, center: CenterProcess) -> tuple[WalletUser, str]:
    member = WalletUser(tmp_path, make_softhsm_token, "member")
    member.init()
    enrolled = member.enroll_member(center)
    assert enrolled.returncode == 0, enrolled.stderr
    return member, json.loads(enrolled.stdout)["member_id"]


def topup_status(center: CenterProcess, topup_id: str) -> str:
    config = json.loads((center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.connect() as conn:
        status = conn.execute(select(topups.c.status).where(topups.c.id == topup_id)).scalar_one()
    engine.dispose()
    return status


def table_rows(page, view: str) -> list[dict[str, str]]:
    """The table as a person reads it: column name -> cell text, per row."""
    return page.eval_on_selector_all(
        f"table[data-view='{view}'] tbody tr",
        "rows => rows.map(row => Object.fromEntries([...row.querySelectorAll('td[data-col]')]"
        ".map(cell => [cell.dataset.col, cell.textContent])))",
    )


def open_tab(page, name: str) -> None:
    page.click(f"#tab-{name}")
    page.wait_for_selector(f"#panel-{name}:not([hidden])")


def test_operator_finds_member_confirms_topup_sees_charts_and_exports(
    tmp_path, make_softhsm_token, live_center, open_page
):
    member, member_id = enroll_member(tmp_path, make_softhsm_token, live_center)
    store = WalletUser(tmp_path, make_softhsm_token, "store")
    store.init()
    store_id = store.json(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya, Tokyo",
        "--bank-account",
        "JP-9-777",
    )["member_id"]
    first = member.json("topup", "5000", "--method", "bank")["topup_id"]
    confirmed = run_cli(
        "center", ["operator", "confirm-topup", first, "--data-dir", str(live_center.data_dir)]
    )
    assert confirmed.returncode == 0, confirmed.stderr
    paid = member.json("pay", "--store", store_id, "--amount", "1200", "--order", "o-1", "--yes")
    pending = member.json("topup", "3000", "--method", "cash")["topup_id"]
    operator = add_operator(tmp_path, make_softhsm_token, live_center, "operator", "Olivia Operator")

    page = open_page(live_center)
    code = login_code(page)
    snap(page, "1-login")
    approved = operator.run("console-login", code, "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    assert "HeadlessChrome" in approved.stderr  # the wallet showed which browser asked for the code
    page.wait_for_selector("#app-view:not([hidden])")
    assert page.locator("#operator-name").inner_text() == "Olivia Operator"
    assert page.locator("#operator-role").inner_text() == "operator"
    assert page.locator("#login-view").is_hidden()

    # Search a member by name; open their statement.
    page.fill("#search-q", "hanako")
    page.click("#form-search button[type=submit]")
    expect(page.locator("table[data-view='search'] td[data-col='name']")).to_have_text(["Hanako Yamada"])
    found = table_rows(page, "search")
    assert [(row["name"], row["party_id"], row["balance_minor"]) for row in found] == [
        ("Hanako Yamada", member_id, "3,800 JPY")
    ]
    page.click("table[data-view='search'] button.open-statement")
    page.wait_for_selector("#statement:not([hidden])")
    snap(page, "2-statement")
    assert page.locator("#statement-title").inner_text() == "Statement of Hanako Yamada"
    assert page.locator("#statement-balance").inner_text() == "3,800 JPY"
    assert [
        (r["kind"], r["credit_minor"], r["debit_minor"], r["balance_minor"])
        for r in table_rows(page, "statement")
    ] == [("topup", "5,000 JPY", "", "5,000 JPY"), ("payment", "", "1,200 JPY", "3,800 JPY")]

    # The pending top-up shows the commands that decide it with the operator's token; no button decides.
    open_tab(page, "topups")
    page.wait_for_selector(f"table[data-view='topups'] tr[data-id='{pending}']")
    row = table_rows(page, "topups")[0]
    assert (row["topup_id"], row["member_name"], row["amount_minor"], row["status"]) == (
        pending,
        "Hanako Yamada",
        "3,000 JPY",
        "pending",
    )
    assert page.locator("table[data-view='topups'] button").count() == 0
    command = page.locator(f"tr[data-id='{pending}'] code[data-decision='confirm']").inner_text()
    assert command == f"wallet operator confirm-topup {pending}"
    assert (
        page.locator(f"tr[data-id='{pending}'] code[data-decision='decline']").inner_text()
        == f"wallet operator decline-topup {pending}"
    )
    snap(page, "3-topups")
    # The operator runs that command: the wallet shows the top-up, signs, and the page shows the result.
    confirmed = operator.run(*command.split()[1:], "--yes", "--json")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "3000 JPY" in confirmed.stderr and "Hanako Yamada" in confirmed.stderr
    page.wait_for_selector(f"tr[data-id='{pending}']", state="detached")
    page.wait_for_selector("#message:not([hidden])")
    message = page.locator("#message").inner_text()
    assert re.fullmatch(
        rf"Top-up {pending} confirmed: 3,000 JPY for Hanako Yamada, by operator:A-[0-9a-f]+\.", message
    ), message
    assert topup_status(live_center, pending) == "confirmed"

    # The member's statement now shows the credit and the higher balance.
    open_tab(page, "search")
    page.click("table[data-view='search'] button.open-statement")
    expect(page.locator("#statement-balance")).to_have_text("6,800 JPY")
    last = table_rows(page, "statement")[-1]
    assert (last["kind"], last["credit_minor"], last["balance_minor"]) == ("topup", "3,000 JPY", "6,800 JPY")

    # Statistics: three charts, one bar (and point) per figure.
    open_tab(page, "stats")
    page.wait_for_selector("svg[data-chart='funding']")
    snap(page, "4-stats")
    assert page.locator("svg[data-chart='daily'] rect.bar").count() == STATS_DAYS
    assert page.locator("svg[data-chart='daily'] circle.point").count() == STATS_DAYS
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert (
        float(page.locator(f"svg[data-chart='daily'] rect.bar[data-day='{today}']").get_attribute("height"))
        > 0
    )
    assert "1 payment, 1,200 JPY in total" in page.locator("svg[data-chart='daily'] desc").text_content()
    store_bars = page.locator("svg[data-chart='top-stores'] rect.bar")
    assert store_bars.count() == 1 and store_bars.get_attribute("data-label") == "Corner Shop"
    funding = page.locator("svg[data-chart='funding'] rect.bar")
    assert [funding.nth(i).get_attribute("data-label") for i in range(funding.count())] == [
        "credit",
        "bank",
        "postal",
        "cash",
    ]
    widths = [float(funding.nth(i).get_attribute("width")) for i in range(4)]
    assert widths[0] == 0 and widths[2] == 0 and 0 < widths[3] < widths[1]  # bank 5,000 > cash 3,000
    for chart in ("daily", "top-stores", "funding"):
        svg = page.locator(f"svg[data-chart='{chart}']")
        assert svg.get_attribute("role") == "img" and svg.locator("title").first.text_content()
        assert (
            page.locator(f"#chart-{chart} details table tbody tr").count()
            == {"daily": STATS_DAYS, "top-stores": 1, "funding": 4}[chart]
        )

    # The payments table and its CSV export hold the same rows.
    open_tab(page, "payments")
    page.wait_for_selector("table[data-view='payments'] tbody tr")
    shown = table_rows(page, "payments")
    assert [(r["payment_id"], r["amount_minor"], r["store_name"]) for r in shown] == [
        (paid["payment_id"], "1,200 JPY", "Corner Shop")
    ]
    with page.expect_download() as download_info:
        page.click("#table-payments a[data-export='payments']")
    download = download_info.value
    assert download.suggested_filename.startswith(
        "tokenpay-payments-"
    ) and download.suggested_filename.endswith(".csv")
    with open(download.path(), newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert [
        (r["payment_id"], r["amount_minor"], r["buyer_name"], r["store_name"], r["order_ref"])
        for r in exported
    ] == [(paid["payment_id"], "1200", "Hanako Yamada", "Corner Shop", "o-1")]
    assert page.script_errors == []

    # Every read above left a trace an auditor can list, newest first.
    trail = center_json(live_center, "operator", "access-log")["reads"]
    views = [read["view"] for read in reversed(trail)]
    for seen in ("search", "statement", "topups", "stats", "payments", "export:payments"):
        assert seen in views, views
    assert views.index("search") < views.index("statement") < views.index("export:payments")
    assert len({read["operator_id"] for read in trail}) == 1
    searched = next(read for read in trail if read["view"] == "search")
    assert searched["filters"]["q"] == "hanako" and searched["rows"] == 1
    assert {read["filters"]["party_id"] for read in trail if read["view"] == "statement"} == {member_id}
    mine = center_json(
        live_center, "operator", "access-log", "--operator", trail[0]["operator_id"], "--limit", "2"
    )
    assert mine["reads"] == trail[:2]
    bad = run_cli(
        "center", ["operator", "access-log", "--operator", "M-1", "--data-dir", str(live_center.data_dir)]
    )
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "operator id" in bad.stderr


def center_json(center, *args: str) -> dict:
    result = run_cli("center", [*args, "--data-dir", str(center.data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_member_key_cannot_log_in_and_auditor_cannot_decide(
    tmp_path, make_softhsm_token, live_center, open_page
):
    member, _member_id = enroll_member(tmp_path, make_softhsm_token, live_center)
    pending = member.json("topup", "2000", "--method", "credit")["topup_id"]
    auditor = add_operator(tmp_path, make_softhsm_token, live_center, "auditor", "Audrey Auditor")

    page = open_page(live_center)
    code = login_code(page)
    refused = member.run("console-login", code, "--yes", "--json")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1 and "not_an_operator" in errors[0], refused.stderr
    page.wait_for_timeout(2_500)  # a couple of polls: the page must still be waiting
    assert page.locator("#login-view").is_visible() and page.locator("#app-view").is_hidden()
    assert page.locator("#challenge-code").inner_text() == code
    assert not [c for c in page.context.cookies() if c["name"] == "tokenpay_console"]

    # The same code, approved by an auditor's token, logs in: the refusal did not use it up.
    approved = auditor.run("console-login", code, "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    page.wait_for_selector("#app-view:not([hidden])")
    assert page.locator("#operator-name").inner_text() == "Audrey Auditor"
    open_tab(page, "topups")
    page.wait_for_selector(f"table[data-view='topups'] tr[data-id='{pending}']")
    snap(page, "5-auditor-topups")
    assert page.locator("table[data-view='topups'] button").count() == 0
    assert (
        page.locator("table[data-view='topups'] code").count() == 0
    )  # no command for a role that cannot decide
    assert page.locator("table[data-view='topups'] th", has_text="Decide with your token").count() == 0

    # A confirm forged with the session's own CSRF token is refused: no session decides.
    forged = page.evaluate(
        """async (topupId) => {
        const me = await (await fetch('/console/api/me')).json();
        const response = await fetch(`/console/api/topups/${topupId}/confirm`,
                                     {method: 'POST', headers: {'X-CSRF-Token': me.csrf_token}});
        return {status: response.status, body: await response.json()};
    }""",
        pending,
    )
    assert forged["status"] == 403 and forged["body"]["error"]["code"] == "signed_action_required"
    assert topup_status(live_center, pending) == "pending"
    assert page.script_errors == []
