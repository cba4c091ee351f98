"""The console's HTTP side (center/console.py) at the API level, on SQLite and PostgreSQL:
sessions and roles on every route, top-up decisions, CSV export, security headers, static files.

The browser test (tests/test_console_browser.py) drives the page; this one pins the API
contract the page relies on, with a FastAPI TestClient over https (Secure cookies).
"""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from operator_support import BASE_URL, error_code, https_client, new_operator, signed
from sqlalchemy import select, text
from test_console_auth import approval_body

from center.api.app import create_app
from center.console.access import MAX_LISTED, list_reads
from center.ledger.book import check_ledger, party_account
from center.storage.db import accounts, topups

READ_ROUTES = [
    "/console/api/search?q=a",
    "/console/api/payments",
    "/console/api/topups",
    "/console/api/refunds",
    "/console/api/payouts",
    "/console/api/stats",
    "/console/api/export/payments.csv",
]


def log_in(center, client, role: str = "operator", name: str = "Ops One") -> dict:
    signer, view = new_operator(center, role=role, name=name)
    challenge = client.post("/console/api/challenge").json()["challenge"]
    request = signed(center, signer, "console_login", approval_body(client, challenge))
    assert client.post("/v1/console/login", json=request.to_json()).status_code == 200
    status = client.get("/console/api/login-status").json()
    assert status["status"] == "approved", status
    return view | {"csrf_token": status["csrf_token"]}


@pytest.fixture
def client(world):
    with https_client(world.center) as client:
        yield client


def balance(center, party_id: str) -> int:
    with center.engine.connect() as conn:
        return conn.execute(
            select(accounts.c.balance_minor).where(accounts.c.id == party_account(party_id))
        ).scalar_one()


def topup_status(center, topup_id: str) -> tuple[str, str | None]:
    with center.engine.connect() as conn:
        row = conn.execute(select(topups.c.status, topups.c.decided_by).where(topups.c.id == topup_id)).one()
    return row.status, row.decided_by


def parse_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.text)))


def test_every_console_api_needs_a_session(world, client):
    for path in [*READ_ROUTES, f"/console/api/members/{world.ids['hanako']}/statement"]:
        assert error_code(client.get(path)) == (401, "console_login_required"), path
    assert error_code(client.get("/console/api/topups/decisions", params={"ids": world.ids["topup_h2"]})) == (
        401,
        "console_login_required",
    )
    refused = client.post(f"/console/api/topups/{world.ids['topup_h2']}/confirm")
    assert error_code(refused) == (403, "signed_action_required")
    assert topup_status(world.center, world.ids["topup_h2"]) == ("pending", None)
    page = client.get("/console")
    assert page.status_code == 200 and "wallet console-login" in page.text
    assert page.headers["content-type"].startswith("text/html")


def test_operator_reads_every_view(world, client):
    log_in(world.center, client)
    search = client.get("/console/api/search", params={"q": "HANAKO"}).json()
    assert [(r["party_id"], r["balance_minor"]) for r in search["rows"]] == [(world.ids["hanako"], 7_900)]
    statement = client.get(
        f"/console/api/members/{world.ids['hanako']}/statement",
        params={"from": "2026-11-21", "to": "2026-11-22"},
    ).json()
    assert statement["opening_balance_minor"] == 8_000
    assert [r["balance_minor"] for r in statement["rows"]] == [7_700, 7_900]
    payments = client.get(
        "/console/api/payments", params={"store_id": world.ids["corner"], "limit": 2}
    ).json()
    assert [r["amount_minor"] for r in payments["rows"]] == [300, 2_000] and payments["has_more"] is True
    pending = client.get("/console/api/topups", params={"status": "pending"}).json()["rows"]
    assert [r["topup_id"] for r in pending] == [world.ids["topup_h2"]]
    assert client.get("/console/api/refunds").json()["rows"][0]["amount_minor"] == 200
    assert (
        client.get("/console/api/payouts", params={"status": ""}).json()["rows"][0]["amount_minor"] == 3_300
    )
    stats = client.get("/console/api/stats", params={"days": 3}).json()
    assert [d["volume_minor"] for d in stats["daily"]] == [2_000, 2_300, 0]
    assert [s["volume_minor"] for s in stats["top_stores"]] == [3_500, 800]


@pytest.mark.parametrize(
    "path, params",
    [
        ("/console/api/payments", {"limit": 201}),
        ("/console/api/payments", {"offset": 10_001}),
        ("/console/api/payments", {"from": "2026-02-30"}),
        ("/console/api/payments", {"to": "yesterday"}),
        ("/console/api/payments", {"store_id": "M-0123456789abcdef"}),
        ("/console/api/search", {"q": "x" * 101}),
        ("/console/api/search", {"role": "operator"}),
        ("/console/api/topups", {"status": "lost"}),
        ("/console/api/stats", {"days": 0}),
        ("/console/api/stats", {"days": 367}),
        ("/console/api/stats", {"top": 51}),
        ("/console/api/export/statement.csv", {}),
        ("/console/api/topups/decisions", {"ids": "P-0123456789abcdef"}),
        ("/console/api/topups/decisions", {"ids": ","}),
        ("/console/api/topups/decisions", {"ids": ",".join(["U-0123456789abcdef"] * 51)}),
    ],
)
def test_bad_filters_are_refused_with_one_code(world, client, path, params):
    log_in(world.center, client)
    response = client.get(path, params=params)
    assert error_code(response) == (422, "invalid_request"), response.text


def test_unknown_things_are_404(world, client):
    log_in(world.center, client)
    assert error_code(client.get("/console/api/members/M-0123456789abcdef/statement")) == (
        404,
        "unknown_party",
    )
    assert error_code(client.get("/console/api/export/everything.csv")) == (404, "not_found")
    assert error_code(client.get("/console/static/../config.json")) == (404, "not_found")
    assert error_code(client.get("/console/static/index.html")) == (404, "not_found")
    decisions = client.get("/console/api/topups/decisions", params={"ids": "U-0123456789abcdef"})
    assert decisions.status_code == 200 and decisions.json() == {"decisions": []}


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_a_console_session_decides_nothing_whatever_it_sends(world, client, role):
    """A session with its own CSRF token, of either role: the old write routes refuse, nothing moves."""
    center, topup_id, hanako = world.center, world.ids["topup_h2"], world.ids["hanako"]
    session = log_in(center, client, role=role, name=f"{role.title()} One")
    for decision in ("confirm", "decline"):
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}, {"X-CSRF-Token": session["csrf_token"]}):
            response = client.post(f"/console/api/topups/{topup_id}/{decision}", headers=headers)
            assert error_code(response) == (403, "signed_action_required"), (decision, headers)
            assert f"wallet operator {decision}-topup {topup_id}" in response.json()["error"]["message"]
    assert topup_status(center, topup_id) == ("pending", None) and balance(center, hanako) == 7_900
    with center.engine.connect() as conn:
        assert check_ledger(conn).problems == []


def test_the_page_learns_decisions_made_with_a_token(world, client):
    """What the top-ups page polls after showing the command: status and who decided, nothing else."""
    center, topup_id = world.center, world.ids["topup_h2"]
    log_in(center, client)
    confirmed = [
        row["topup_id"]
        for row in client.get("/console/api/topups", params={"status": "confirmed"}).json()["rows"]
    ]
    before = len(trail(center))
    answer = client.get("/console/api/topups/decisions", params={"ids": f"{topup_id},{confirmed[0]}"}).json()
    assert [(d["topup_id"], d["status"]) for d in answer["decisions"]] == [
        (topup_id, "pending"),
        (confirmed[0], "confirmed"),
    ]
    assert set(answer["decisions"][0]) == {"topup_id", "status", "decided_at_ms", "decided_by"}
    assert len(trail(center)) == before  # no member data in it: not a recorded read
    center.decide_topup(topup_id, "confirm", decided_by="operator:O-test")
    decided = client.get("/console/api/topups/decisions", params={"ids": topup_id}).json()["decisions"][0]
    assert (decided["status"], decided["decided_by"]) == ("confirmed", "operator:O-test")


def test_csv_export_has_the_rows_of_the_table(world, client):
    log_in(world.center, client)
    params = {"store_id": world.ids["corner"], "from": "2026-11-20", "to": "2026-11-21"}
    table = client.get("/console/api/payments", params=params).json()["rows"]
    export = client.get("/console/api/export/payments.csv", params=params)
    assert export.status_code == 200 and export.headers["content-type"] == "text/csv; charset=utf-8"
    assert export.headers["content-disposition"].startswith('attachment; filename="tokenpay-payments-')
    assert export.headers["x-tokenpay-export-truncated"] == "false"
    assert export.text.startswith(
        "created_at,payment_id,buyer_id,buyer_name,store_id,store_name,amount_minor,"
    )
    rows = parse_csv(export)
    assert [(r["payment_id"], int(r["amount_minor"]), r["buyer_name"]) for r in rows] == [
        (t["payment_id"], t["amount_minor"], t["buyer_name"]) for t in table
    ]
    assert [r["created_at"] for r in rows] == [
        "2026-11-21T03:00:00.000Z",
        "2026-11-21T02:00:00.000Z",
        "2026-11-20T09:00:00.000Z",
    ]
    statement = parse_csv(
        client.get("/console/api/export/statement.csv", params={"party_id": world.ids["hanako"]})
    )
    assert [(r["debit_minor"], r["credit_minor"], r["balance_minor"]) for r in statement] == [
        ("0", "10000", "10000"),
        ("1200", "0", "8800"),
        ("800", "0", "8000"),
        ("300", "0", "7700"),
        ("0", "200", "7900"),
    ]
    daily = parse_csv(client.get("/console/api/export/stats-daily.csv", params={"days": 3}))
    assert [(r["day"], r["count"], r["volume_minor"]) for r in daily] == [
        ("2026-11-20", "2", "2000"),
        ("2026-11-21", "2", "2300"),
        ("2026-11-22", "0", "0"),
    ]
    funding = parse_csv(client.get("/console/api/export/stats-funding.csv", params={"days": 3}))
    assert {r["method"]: r["amount_minor"] for r in funding} == {
        "credit": "5000",
        "bank": "10000",
        "postal": "0",
        "cash": "0",
    }


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(world, client):
    names = ['=HYPERLINK("http://evil.example","x")', "+1+2", "-3+4", "@SUM(A1)", 'Plain, "quoted" name']
    for index, name in enumerate(names):
        world.clock.at(2, 4 + index)
        world.enroll(f"odd{index}", "member", name)
    log_in(world.center, client)
    rows = parse_csv(client.get("/console/api/export/search.csv", params={"role": "member"}))
    exported = {r["party_id"]: r["name"] for r in rows}
    assert [exported[world.ids[f"odd{i}"]] for i in range(len(names))] == [
        '\'=HYPERLINK("http://evil.example","x")',
        "'+1+2",
        "'-3+4",
        "'@SUM(A1)",
        'Plain, "quoted" name',
    ]
    assert exported[world.ids["hanako"]] == "Hanako Yamada"
    # The JSON view shows the names as they are: the apostrophe is for spreadsheets only.
    listed = client.get("/console/api/search", params={"q": "+1+2"}).json()["rows"]
    assert [r["name"] for r in listed] == ["+1+2"]


def test_console_answers_carry_security_headers_and_others_do_not(world, client):
    log_in(world.center, client)
    for path in (
        "/console",
        "/console/static/console.js",
        "/console/api/search",
        "/console/api/me",
        "/console/api/export/payouts.csv",
        "/console/api/members/M-0123456789abcdef/statement",
    ):
        response = client.get(path)
        csp = response.headers.get("content-security-policy", "")
        assert (
            "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        ), path
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
    public = client.get("/v1/center")
    assert "content-security-policy" not in public.headers and "x-frame-options" not in public.headers
    script = client.get("/console/static/console.js")
    assert script.headers["content-type"].startswith("text/javascript") and "TokenpayCharts" in script.text


def test_page_loads_nothing_from_elsewhere_and_has_no_inline_script():
    from center.console.routes import PAGE_FILE, STATIC_DIR, STATIC_FILES

    page = (STATIC_DIR / PAGE_FILE).read_text()
    assert "<script>" not in page and "onclick" not in page.lower() and "style=" not in page
    for name in [PAGE_FILE, *STATIC_FILES]:
        text = (
            (STATIC_DIR / name).read_text().replace("http://www.w3.org/2000/svg", "")
        )  # a name, not a fetch
        for marker in ("http://", "https://", "//cdn", "innerHTML", "eval(", "new Function"):
            assert marker not in text, (name, marker)


def trail(center) -> list[dict]:
    with center.engine.connect() as conn:
        return list(reversed(list_reads(conn, limit=MAX_LISTED)))


def test_every_read_is_recorded_before_its_answer_and_refusals_are_not(world, client):
    for path in READ_ROUTES:
        client.get(path)
    assert trail(world.center) == []  # not logged in: nothing was read
    operator = log_in(world.center, client)
    client.get("/console/api/search", params={"q": "HANAKO"})
    client.get(f"/console/api/members/{world.ids['hanako']}/statement", params={"from": "2026-11-21"})
    client.get("/console/api/payments", params={"store_id": world.ids["corner"], "limit": 2})
    client.get("/console/api/stats", params={"days": 3})
    client.get("/console/api/export/topups.csv", params={"status": "pending"})
    assert client.get("/console/api/payments", params={"limit": 201}).status_code == 422
    reads = trail(world.center)
    assert [(r["view"], r["rows"]) for r in reads] == [
        ("search", 1),
        ("statement", 2),
        ("payments", 2),
        ("stats", 3 + 2),
        ("export:topups", 1),
    ]
    assert {(r["operator_id"], r["kid"]) for r in reads} == {(operator["operator_id"], operator["kid"])}
    assert reads[0]["filters"] == {"q": "HANAKO", "limit": 50, "offset": 0}
    assert reads[1]["filters"]["party_id"] == world.ids["hanako"] and reads[1]["filters"]["from_ms"] > 0
    assert reads[2]["filters"] == {"store_id": world.ids["corner"], "limit": 2, "offset": 0}
    assert reads[3]["filters"]["days"] == 3 and "limit" not in reads[3]["filters"]
    assert len({r["session_sha256"] for r in reads}) == 1
    assert all(len(r["session_sha256"]) == 64 for r in reads)  # the stored hash, never the cookie
    assert client.cookies.get("tokenpay_console") not in {r["session_sha256"] for r in reads}


def test_no_answer_leaves_without_its_trace(world):
    """The trail cannot be written (its table is gone): the read fails and shows no member data."""
    with https_client(world.center) as client:
        log_in(world.center, client)
        with world.center.engine.begin() as conn:
            conn.execute(text("DROP TABLE console_reads"))
        with TestClient(
            create_app(world.center), base_url=BASE_URL, raise_server_exceptions=False
        ) as failing:
            failing.cookies = client.cookies
            answer = failing.get("/console/api/search", params={"q": "HANAKO"})
    assert answer.status_code == 500 and "Hanako" not in answer.text
