"""The operator console's layout and reading, in headless Chromium at phone and desktop widths (issue 16).

Against a real `center serve` over HTTPS (SQLite), with real wallets on SoftHSM tokens, as in
tests/test_console_browser.py, whose fixtures and helpers this file reuses. It checks what a person
sees at 390 px and at 1280 px:
- layout: no view scrolls sideways, the login code is whole, every control can be scrolled into view,
  chart text is drawn at a readable size;
- stale state: what no longer applies is cleared (a statement under a search that found nothing, the
  rows of a refused filter, an error banner after logout);
- reading: the operator's name on a decision, the order of a payment in a statement, ids that never
  break at their hyphen, today and every day's date on the daily chart, the count on its own axis,
  right-aligned numbers, and a name found whatever the order of its words.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import CenterProcess, free_port, run_cli
from test_console_browser import (  # noqa: F401 (chromium and open_page are fixtures)
    WAIT_MS,
    add_operator,
    chromium,
    enroll_member,
    expect,
    login_code,
    open_page,
    open_tab,
    snap,
    table_rows,
)
from test_wallet_e2e import WalletUser

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
MIN_CHART_FONT_PX = 10  # chart text as drawn on the screen, after the SVG is scaled to its box
STATS_DAYS = 30
ORDER = "A-1001"
NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?( JPY)?$")


@dataclass
class World:
    center: CenterProcess
    operator: WalletUser
    member_id: str
    payment_id: str
    signed_topup: str  # confirmed by the operator's token: decided_by is operator:<operator id>
    pending_topup: str


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_softhsm_token):
    """One center with a row in every view: a member and a store, a top-up confirmed on the center host,
    a payment with an order reference, a refund, a payout, a top-up confirmed by an operator's signed
    command and one still pending."""
    tmp_path = tmp_path_factory.mktemp("console-layout")
    data_dir = tmp_path / "center"
    made = run_cli(
        "center",
        [
            "init",
            "--data-dir",
            str(data_dir),
            "--db",
            f"sqlite:///{tmp_path / 'center.db'}",
            "--currency",
            "JPY",
        ],
    )
    assert made.returncode == 0, made.stderr
    center = CenterProcess(data_dir=data_dir, port=free_port())
    center.start()
    try:
        yield make_world(tmp_path, make_softhsm_token, center)
    finally:
        center.stop()


def make_world(tmp_path: Path, make_softhsm_token, center: CenterProcess) -> World:
    member, member_id = enroll_member(tmp_path, make_softhsm_token, center)
    store = WalletUser(tmp_path, make_softhsm_token, "store")
    store.init()
    store_id = store.json(
        "enroll",
        *("--center", center.url, "--center-cert", str(center.cert), "--store", "--name", "Corner Shop"),
        *("--address", "2-2 Shibuya, Tokyo", "--bank-account", "JP-9-777"),
    )["member_id"]
    funded = member.json("topup", "10000", "--method", "bank")["topup_id"]
    confirmed = run_cli("center", ["operator", "confirm-topup", funded, "--data-dir", str(center.data_dir)])
    assert confirmed.returncode == 0, confirmed.stderr
    paid = member.json("pay", "--store", store_id, "--amount", "3500", "--order", ORDER, "--yes")
    assert store.json("refund", paid["payment_id"], "--amount", "500")["amount_minor"] == 500
    assert store.json("payout")["status"] == "pending"
    operator = add_operator(tmp_path, make_softhsm_token, center, "operator", "Olivia Operator")
    signed = member.json("topup", "2000", "--method", "credit")["topup_id"]
    decided = operator.run("operator", "confirm-topup", signed, "--yes", "--json")
    assert decided.returncode == 0, decided.stderr
    pending = member.json("topup", "3000", "--method", "cash")["topup_id"]
    return World(center, operator, member_id, paid["payment_id"], signed, pending)


def logged_in(open_page, world: World, viewport: dict):  # noqa: F811 (open_page: the fixture's function)
    page = open_page(world.center)
    page.set_viewport_size(viewport)
    code = login_code(page)
    approved = world.operator.run("console-login", code, "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    page.wait_for_selector("#app-view:not([hidden])")
    return page


def eventually(check, what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


# --- what the layout test measures -------------------------------------------------------------------


def page_width(page) -> tuple[int, int]:
    return tuple(page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]"))


def assert_no_sideways_scroll(page, where: str) -> None:
    scroll_px, inner_px = page_width(page)
    assert scroll_px <= inner_px, f"{where}: the page is {scroll_px} px wide in a {inner_px} px window"


def login_code_box(page) -> dict:
    """Where the login code is drawn, and the box of the command around it that could clip it."""
    return page.evaluate(
        """() => {
        const code = document.getElementById('challenge-code').getBoundingClientRect();
        const pre = document.querySelector('pre.command');
        const box = pre.getBoundingClientRect();
        return {code: [code.left, code.right], box: [box.left, box.right], inner: window.innerWidth,
                clipped: pre.scrollWidth > pre.clientWidth};
    }"""
    )


def assert_login_code_whole(page, where: str) -> None:
    seen = login_code_box(page)
    (left, right), (box_left, box_right) = seen["code"], seen["box"]
    assert not seen["clipped"], f"{where}: the login command scrolls inside its box: {seen}"
    assert 0 <= box_left <= left and right <= box_right <= seen["inner"], f"{where}: code cut off: {seen}"


CONTROLS = (
    "main section:not([hidden]) .panel:not([hidden]) :is(button, a, input, select, code.decision-command)"
    ", #app-view:not([hidden]) nav.tabs button, #login-view:not([hidden]) button, header button"
)


def assert_controls_reachable(page, where: str) -> int:
    """Every visible control of the shown view lies wholly inside the window once scrolled to."""
    controls = page.locator(CONTROLS)
    checked = 0
    for i in range(controls.count()):
        control = controls.nth(i)
        if not control.is_visible():
            continue  # e.g. a table inside closed <details>
        control.scroll_into_view_if_needed()
        box = control.bounding_box()
        inner = page.viewport_size
        label = control.evaluate("c => c.outerHTML.slice(0, 120)")
        assert box["x"] >= 0 and box["x"] + box["width"] <= inner["width"] + 0.5, f"{where}: {label} at {box}"
        assert box["y"] >= 0 and box["y"] + box["height"] <= inner["height"] + 0.5, (
            f"{where}: {label} at {box}"
        )
        checked += 1
    return checked


def chart_font_sizes(page) -> list[float]:
    """Each chart text's font size on the screen: its CSS size times the SVG's scale."""
    return page.evaluate(
        """() => [...document.querySelectorAll('svg[data-chart]')].flatMap(svg => {
        const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
        return [...svg.querySelectorAll('text')].map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
    })"""
    )


def check_view(page, where: str) -> int:
    assert_no_sideways_scroll(page, where)
    checked = assert_controls_reachable(page, where)
    assert_no_sideways_scroll(page, where)  # scrolling to a control did not widen the page either
    return checked


def walk_views(page, world: World, width: str) -> None:
    open_tab(page, "search")
    page.fill("#search-q", "hanako")
    page.click("#form-search button[type=submit]")
    page.click("table[data-view='search'] button.open-statement")
    page.wait_for_selector("table[data-view='statement'] tbody tr")
    check_view(page, f"search and statement at {width}")
    snap(page, f"layout-{width}-search")
    open_tab(page, "topups")
    page.wait_for_selector(f"tr[data-id='{world.pending_topup}'] code.decision-command")
    assert page.locator("code.decision-command").count() == 2  # confirm and decline, checked below
    check_view(page, f"pending top-ups at {width}")
    snap(page, f"layout-{width}-topups")
    page.select_option("#form-topups select[name=status]", "")
    page.click("#form-topups button[type=submit]")
    page.wait_for_selector(f"tr[data-id='{world.signed_topup}']")
    check_view(page, f"all top-ups at {width}")
    for view in ("payments", "refunds", "payouts"):
        open_tab(page, view)
        page.wait_for_selector(f"table[data-view='{view}'] tbody tr")
        check_view(page, f"{view} at {width}")
        snap(page, f"layout-{width}-{view}")
    open_tab(page, "stats")
    page.wait_for_selector("svg[data-chart='funding']")
    check_view(page, f"statistics at {width}")
    snap(page, f"layout-{width}-stats")
    eventually(
        lambda: min(chart_font_sizes(page)) >= MIN_CHART_FONT_PX,
        f"chart text at {width}: {min(chart_font_sizes(page)):.1f} px",
    )


def test_every_view_fits_a_phone_and_a_desktop(world, open_page):  # noqa: F811
    page = logged_in(open_page, world, PHONE)
    page.click("#logout")  # the login view, at the phone's width
    page.wait_for_selector("#login-view:not([hidden])")
    login_code(page)  # a new code: the login view is shown and settled
    for viewport, width in ((PHONE, "390px"), (DESKTOP, "1280px")):
        page.set_viewport_size(viewport)
        assert_no_sideways_scroll(page, f"login at {width}")
        assert_login_code_whole(page, f"login at {width}")
        snap(page, f"layout-{width}-login")
    page.set_viewport_size(PHONE)
    approved = world.operator.run("console-login", login_code(page), "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    page.wait_for_selector("#app-view:not([hidden])")
    walk_views(page, world, "390px")
    # Widened with the statistics shown: the charts are drawn again for the wider box, so their text
    # keeps its size instead of growing with the scale.
    page.set_viewport_size(DESKTOP)
    eventually(lambda: max(chart_font_sizes(page)) < 15, "charts redrawn at 1280 px")  # the title is 14 px
    assert_no_sideways_scroll(page, "statistics widened to 1280 px")
    walk_views(page, world, "1280px")
    assert page.script_errors == []


# --- stale state -------------------------------------------------------------------------------------


def test_what_no_longer_applies_is_cleared(world, open_page):  # noqa: F811
    page = logged_in(open_page, world, DESKTOP)
    # A statement opened from one search goes with the next search, here one that found nobody.
    page.fill("#search-q", "hanako")
    page.click("#form-search button[type=submit]")
    page.click("table[data-view='search'] button.open-statement")
    page.wait_for_selector("#statement:not([hidden])")
    page.fill("#search-q", "nobody by this name")
    page.click("#form-search button[type=submit]")
    expect(page.locator("#table-search .empty")).to_have_text("Nothing matches.")
    expect(page.locator("#statement")).to_be_hidden()
    assert page.locator("table[data-view='statement'] tbody tr").count() == 0

    # A refused filter (from after to) leaves no rows of the previous filter under its error.
    open_tab(page, "payments")
    page.wait_for_selector("table[data-view='payments'] tbody tr")
    page.fill("#form-payments input[name=from]", "2030-01-02")
    page.fill("#form-payments input[name=to]", "2030-01-01")
    page.click("#form-payments button[type=submit]")
    expect(page.locator("#error:not([hidden])")).to_contain_text("invalid_request")
    assert page.locator("#table-payments table").count() == 0, table_rows(page, "payments")
    # A filter the center takes again: the error goes, the rows come back.
    page.fill("#form-payments input[name=from]", "")
    page.fill("#form-payments input[name=to]", "")
    page.click("#form-payments button[type=submit]")
    expect(page.locator("table[data-view='payments'] td[data-col='payment_id']")).to_have_text(
        [world.payment_id]
    )
    expect(page.locator("#error")).to_be_hidden()

    # The same for a statement's dates: its rows and opening balance go, its party stays named.
    open_tab(page, "search")
    expect(page.locator("#table-search .empty")).to_be_visible()  # the last search, shown again
    page.fill("#search-q", "hanako")
    page.click("#form-search button[type=submit]")
    page.click("table[data-view='search'] button.open-statement")
    page.wait_for_selector("table[data-view='statement'] tbody tr")
    page.fill("#form-statement input[name=from]", "2030-01-02")
    page.fill("#form-statement input[name=to]", "2030-01-01")
    page.click("#form-statement button[type=submit]")
    expect(page.locator("#error:not([hidden])")).to_contain_text("invalid_request")
    assert page.locator("table[data-view='statement']").count() == 0
    assert page.locator("#statement-opening").inner_text() == ""

    # Logging out with the error shown: the login view has no banner, and no data of the session is left.
    page.click("#logout")
    page.wait_for_selector("#login-view:not([hidden])")
    login_code(page)  # a new code: the login view is shown and settled
    assert page.locator("#error").is_hidden() and page.locator("#message").is_hidden()
    left = page.evaluate("() => [...document.querySelectorAll('#app-view td, #app-view svg')].length")
    assert left == 0
    assert page.script_errors == []


# --- reading -----------------------------------------------------------------------------------------


def lines_of(page, selector: str) -> list[dict]:
    """For each element: its text, its computed white-space, and on how many lines its text is drawn.
    Queried and measured in one call: a table drawn again meanwhile cannot detach what is measured."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)].map(node => {
        const range = document.createRange();
        range.selectNodeContents(node);
        const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        return {text: node.textContent, whiteSpace: getComputedStyle(node).whiteSpace, lines: tops.size};
    })""",
        selector,
    )


def misaligned_numbers(page) -> list[str]:
    """Cells of every table on the page holding a number or an amount that are not right-aligned."""
    return page.evaluate(
        """(pattern) => {
        const number = new RegExp(pattern);
        return [...document.querySelectorAll('#app-view table td')]
            .filter(td => number.test(td.textContent.trim()))
            .filter(td => !['right', 'end'].includes(getComputedStyle(td).textAlign))
            .map(td => `${td.closest('table').dataset.view || td.closest('figure').id}: ${td.textContent}`);
    }""",
        NUMBER.pattern,
    )


def day_titles(page) -> dict[str, str]:
    """For each day's bar: the title a person sees on hovering the day's column, just above the axis."""
    page.locator("svg[data-chart='daily']").scroll_into_view_if_needed()
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("svg[data-chart='daily'] rect.bar")]
        .map(bar => {
        const box = bar.getBoundingClientRect();
        const hit = document.elementFromPoint(box.left + box.width / 2, box.bottom - 4);
        const titled = hit && hit.closest('svg *:has(> title)');
        const title = titled ? titled.querySelector(':scope > title').textContent : '';
        return [bar.dataset.day, title];
    }))"""
    )


def panel_box(page, panel: str) -> dict:
    return page.locator(f"svg[data-chart='daily'] g[data-panel='{panel}']").bounding_box()


def test_names_orders_ids_and_charts_read_well(world, open_page):  # noqa: F811
    page = logged_in(open_page, world, DESKTOP)
    # The words of a name in either order.
    page.fill("#search-q", "yamada hanako")
    page.click("#form-search button[type=submit]")
    expect(page.locator("table[data-view='search'] td[data-col='name']")).to_have_text(["Hanako Yamada"])
    page.click("table[data-view='search'] button.open-statement")
    page.wait_for_selector("table[data-view='statement'] tbody tr")
    statement = table_rows(page, "statement")
    assert [(r["kind"], r["order_ref"]) for r in statement] == [
        ("topup", ""),
        ("payment", ORDER),
        ("refund", ORDER),  # the order of the payment the refund returns money from
        ("topup", ""),
    ], statement

    # Who decided: the operator's name, the id on hover.
    open_tab(page, "topups")
    page.select_option("#form-topups select[name=status]", "")
    page.click("#form-topups button[type=submit]")
    decided = page.locator(f"tr[data-id='{world.signed_topup}'] td[data-col='decided_by']")
    expect(decided).to_have_text("Olivia Operator")
    assert re.fullmatch(r"operator:A-[0-9a-f]+", decided.get_attribute("title") or ""), decided.get_attribute(
        "title"
    )
    host = page.locator(f"tr[data-id='{world.pending_topup}'] td[data-col='decided_by']")
    assert host.inner_text() == "" and host.get_attribute("title") is None
    assert misaligned_numbers(page) == []

    # Ids stay on one line, at a phone's width too, in the tables and in the commands that decide.
    for view in ("payments", "refunds"):
        open_tab(page, view)
        page.wait_for_selector(f"table[data-view='{view}'] tbody tr")
        assert misaligned_numbers(page) == [], view
    page.set_viewport_size(PHONE)
    for view in ("search", "topups", "payments", "refunds", "payouts"):
        open_tab(page, view)
        page.wait_for_selector(f"table[data-view='{view}'] tbody tr")
        ids = lines_of(page, f"#panel-{view} :is(td.mono, span.id)")  # span.id: in a command or a sentence
        assert ids, view
        for cell in ids:
            if "-" in cell["text"]:
                assert cell["whiteSpace"] == "nowrap" and cell["lines"] == 1, (view, cell)
        assert misaligned_numbers(page) == [], view
    page.set_viewport_size(DESKTOP)

    # The daily chart: today labelled, every day's date on hover, the count on an axis of its own.
    open_tab(page, "stats")
    page.wait_for_selector("svg[data-chart='funding']")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    label = page.locator("svg[data-chart='daily'] text.today")
    assert label.text_content() == "today" and label.get_attribute("data-day") == today
    titles = day_titles(page)
    assert len(titles) == STATS_DAYS and today in titles
    for day, title in titles.items():
        assert title.startswith(day), (day, title)
    assert "3,500 JPY" in titles[today] and "1 payment" in titles[today]
    volume, count = panel_box(page, "volume"), panel_box(page, "count")
    assert volume["y"] + volume["height"] <= count["y"], (volume, count)  # one above the other, apart
    assert page.locator("svg[data-chart='daily'] g[data-panel='count'] circle.point").count() == STATS_DAYS
    assert page.locator("svg[data-chart='daily'] g[data-panel='volume'] circle").count() == 0
    count_ticks = page.locator("svg[data-chart='daily'] g[data-panel='count'] text.tick").all_text_contents()
    volume_ticks = page.locator(
        "svg[data-chart='daily'] g[data-panel='volume'] text.tick"
    ).all_text_contents()
    assert count_ticks and all(re.fullmatch(r"[0-9]+", tick) for tick in count_ticks), count_ticks
    assert volume_ticks and all(tick.endswith(" JPY") for tick in volume_ticks), volume_ticks
    assert misaligned_numbers(page) == []  # the charts' data tables too
    snap(page, "reading-stats")
    assert page.script_errors == []
