"""Metrics: after real requests the Prometheus text parses and the counters match what was done,
in process (TestClient, SQLite and PostgreSQL; the app's own exposition, since the public port
serves none) and on a live `center serve --workers 2 --metrics-port N`, where each worker counts in
its own files and a scrape of the loopback listener sums them."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from metrics_support import MetricsCenter, scrape, value
from ops_support import STORE_NAME, SignedClient, center_cli, funded_member, pay_body
from receipt_support import receipt_result
from support import SoftwareSigner, free_port, run_cli

from token_wallet.client import pinned_ssl_context


def exposition(client) -> str:
    """What the metrics listener would serve for this app (the public port answers /metrics 404)."""
    content, media_type = client.app.state.metrics.render()
    assert media_type.startswith("text/plain")
    return content.decode()


def signed(api, signer: SoftwareSigner, center, path: str, msg_type: str, body: dict):
    return api.post(path, json=signer.envelope(msg_type, body, aud=center.center_id).to_json())


def enroll(api, center, role: str, **fields) -> tuple[SoftwareSigner, str]:
    signer = SoftwareSigner()
    response = signed(api, signer, center, "/v1/enroll", "enroll", signer.enroll_body(role, **fields))
    assert response.status_code == 200, response.text
    return signer, receipt_result(response.json())["member_id"]


def funded(api, center, amount_minor: int) -> SoftwareSigner:
    member, _ = enroll(api, center, "member")
    response = signed(
        api,
        member,
        center,
        "/v1/topups",
        "topup",
        {"amount_minor": amount_minor, "currency": "JPY", "method": "bank"},
    )
    topup_id = receipt_result(response.json())["topup_id"]
    center.decide_topup(topup_id, "confirm", decided_by="operator:test")
    return member


def test_counters_match_the_requests_made(api, center):
    _store, store_id = enroll(api, center, "store", name=STORE_NAME)
    member = funded(api, center, 1_000)
    for amount in (100, 200, 300):
        body = pay_body(store_id, amount, f"o-{amount}")
        assert signed(api, member, center, "/v1/payments", "pay", body).status_code == 200
    for _ in range(2):
        refused = signed(api, member, center, "/v1/payments", "pay", pay_body(store_id, 10_000, "big"))
        assert refused.json()["error"]["code"] == "insufficient_funds"
    assert api.get(f"/v1/stores/{store_id}").status_code == 200
    assert api.get("/v1/stores/S-00000000000000ff").json()["error"]["code"] == "unknown_payee"
    assert api.get("/no/such/path").status_code == 404
    assert (
        api.post(
            "/v1/payments", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert api.post("/v1/payments", content=b"x" * 70_000).status_code == 413

    text = exposition(api)
    samples = scrape(text)
    assert value(samples, "tokenpay_payments_total") == 3
    assert value(samples, "tokenpay_payment_amount_minor_total") == 600
    assert value(samples, "tokenpay_errors_total", code="insufficient_funds") == 2
    assert value(samples, "tokenpay_errors_total", code="unknown_payee") == 1
    assert value(samples, "tokenpay_errors_total", code="not_found") == 1
    assert value(samples, "tokenpay_errors_total", code="invalid_request") == 1
    assert value(samples, "tokenpay_errors_total", code="body_too_large") == 1
    payments = {"route": "/v1/payments", "method": "POST"}
    assert value(samples, "tokenpay_http_requests_total", status="200", **payments) == 3
    assert value(samples, "tokenpay_http_requests_total", status="409", **payments) == 2
    assert value(samples, "tokenpay_http_requests_total", status="422", **payments) == 1
    assert (
        value(
            samples, "tokenpay_http_requests_total", route="/v1/stores/{store_id}", method="GET", status="200"
        )
        == 1
    )
    assert value(samples, "tokenpay_http_requests_total", route="other", method="GET", status="404") == 1
    assert (
        value(samples, "tokenpay_http_requests_total", route="/v1/enroll", method="POST", status="200") == 2
    )
    assert value(samples, "tokenpay_http_request_duration_seconds_count", route="/v1/payments") == 6
    assert value(samples, "tokenpay_http_request_duration_seconds_sum", route="/v1/payments") > 0
    # Route templates only: the raw path (an id) never becomes a label value.
    assert store_id not in text and "/no/such/path" not in text
    public = api.get("/metrics")  # not on the public port (tests/test_attack_exposure.py attacks it live)
    assert public.status_code == 404 and public.json()["error"]["code"] == "not_found"


def test_a_resent_payment_is_answered_again_but_counted_once(api, center):
    _store, store_id = enroll(api, center, "store", name=STORE_NAME)
    member = funded(api, center, 1_000)
    request = member.envelope("pay", pay_body(store_id, 250, "once"), aud=center.center_id).to_json()
    first = api.post("/v1/payments", json=request)
    time.sleep(1.05 - time.time() % 1)  # the stored receipt is now from an earlier second than the resend
    again = api.post("/v1/payments", json=request)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    samples = scrape(exposition(api))
    assert value(samples, "tokenpay_payments_total") == 1
    assert value(samples, "tokenpay_payment_amount_minor_total") == 250
    assert (
        value(samples, "tokenpay_http_requests_total", route="/v1/payments", method="POST", status="200") == 2
    )


def test_request_ids_are_echoed_when_well_formed(api):
    assert (
        api.get("/healthz", headers={"x-request-id": "lb-1234.abc"}).headers["x-request-id"] == "lb-1234.abc"
    )
    replaced = api.get("/healthz", headers={"x-request-id": "Hanako Yamada\n"}).headers["x-request-id"]
    assert replaced != "Hanako Yamada\n" and len(replaced) == 16


def request_pids(log_path) -> set[int]:
    pids = set()
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "request":
                pids.add(event["pid"])
    return pids


def test_two_workers_count_into_one_exposition(tmp_path, db_url):
    data_dir = tmp_path / "center"
    made = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url])
    assert made.returncode == 0, made.stderr
    (data_dir / "metrics" / "999999-0123abcd").mkdir(parents=True)
    (data_dir / "metrics" / "999999-0123abcd" / "counter_999999.db").write_bytes(
        b"stale file of an earlier run"
    )
    (data_dir / "metrics" / "counter_999998.db").write_bytes(
        b"stale file of the layout before one directory per server"
    )
    center = MetricsCenter(data_dir=data_dir, port=free_port())
    center.start(workers=2)
    try:
        assert not (data_dir / "metrics" / "999999-0123abcd").exists()  # no server holds it: swept
        assert not (data_dir / "metrics" / "counter_999998.db").exists()
        client = SignedClient(center)
        _store, store_id = client.enroll("store", name=STORE_NAME)
        member, _ = funded_member(client, center, 1_000)
        for amount in (100, 200, 300):
            client.result(member, "pay", pay_body(store_id, amount, f"o-{amount}"))
        assert [client.refused(member, "pay", pay_body(store_id, 5_000, "big")) for _ in range(2)] == [
            "insufficient_funds"
        ] * 2
        client.close()
        # New connections until both workers have answered (the kernel picks the worker per connection).
        log = tmp_path / f"center-{center.port}.log"
        context = pinned_ssl_context(center.cert.read_bytes())
        health_calls = 0
        while len(request_pids(log)) < 2 and health_calls < 300:
            assert httpx.get(f"{center.url}/healthz", verify=context, timeout=10).status_code == 200
            health_calls += 1
        assert len(request_pids(log)) == 2, "one worker answered every connection"
        scraped = [center.scrape() for _ in range(3)]
        for samples in scraped:  # the listener sums every worker's files
            assert value(samples, "tokenpay_payments_total") == 3
            assert value(samples, "tokenpay_payment_amount_minor_total") == 600
            assert value(samples, "tokenpay_errors_total", code="insufficient_funds") == 2
            assert (
                value(
                    samples, "tokenpay_http_requests_total", route="/v1/payments", method="POST", status="409"
                )
                == 2
            )
            assert (
                value(samples, "tokenpay_http_requests_total", route="/healthz", method="GET", status="200")
                >= health_calls + 1
            )
        worker_files = {p.name.rsplit("_", 1)[1] for p in (data_dir / "metrics").glob("*/counter_*.db")}
        assert len(worker_files) == 2
        assert center_cli(center, "ledger", "check")["ok"] is True
    finally:
        center.stop()


@pytest.mark.parametrize("option", [["--log-format", "xml"], ["--log-level", "loud"]])
def test_serve_refuses_unknown_log_options(tmp_path, option):
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir)]).returncode == 0
    result = run_cli("center", ["serve", "--data-dir", str(data_dir), "--port", str(free_port()), *option])
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"error: {option[0]} ")
    assert not (data_dir / "metrics").exists()  # refused before anything was prepared


def test_an_unexpected_failure_counts_as_internal_error(center):
    from fastapi.testclient import TestClient

    from center.api.app import create_app

    def broken(store_id: str) -> dict:
        raise RuntimeError("a bug")

    center.store_info = broken  # a fault injected into the domain call, nothing else replaced
    with TestClient(create_app(center), raise_server_exceptions=False) as client:
        assert client.get("/v1/stores/S-0000000000000001").status_code == 500
        samples = scrape(exposition(client))
    assert value(samples, "tokenpay_errors_total", code="internal_error") == 1
    assert (
        value(
            samples, "tokenpay_http_requests_total", route="/v1/stores/{store_id}", method="GET", status="500"
        )
        == 1
    )


def test_a_payment_batch_counts_each_accepted_payment_and_each_refusal(api, center):
    _store, store_id = enroll(api, center, "store", name=STORE_NAME)
    member = funded(api, center, 1_000)
    items = [
        member.envelope("pay", pay_body(store_id, amount, f"b-{amount}"), aud=center.center_id).to_json()
        for amount in (100, 250, 5_000)
    ]
    malformed = {**items[0], "kid": "not-a-key-id"}
    response = api.post("/v1/payments/batch", json={"payments": [*items, malformed]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert ["receipt" in r for r in results] == [True, True, False, False]
    assert [r["error"]["code"] for r in results[2:]] == ["insufficient_funds", "malformed_envelope"]
    samples = scrape(exposition(api))
    assert value(samples, "tokenpay_payments_total") == 2
    assert value(samples, "tokenpay_payment_amount_minor_total") == 350
    assert value(samples, "tokenpay_errors_total", code="insufficient_funds") == 1
    assert value(samples, "tokenpay_errors_total", code="malformed_envelope") == 1
    assert (
        value(
            samples, "tokenpay_http_requests_total", route="/v1/payments/batch", method="POST", status="200"
        )
        == 1
    )
