"""Structured logs of `center serve`: JSON lines on stderr, one per request plus start and
stop events, with ids only. A live flow with real wallets (SoftHSM tokens, passwords in
files) and recognisable personal data must leave none of it, nor any secret, in the log."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
from ops_support import center_cli
from support import CenterProcess, free_port, run_cli
from test_wallet_e2e import WalletUser

from center.ops.logs import JsonFormatter, TextFormatter, log_event, logging_config
from token_wallet.client import pinned_ssl_context

REQUEST_KEYS = {"ts", "level", "event", "request_id", "method", "route", "status", "duration_ms", "pid"}


def read_log(path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines, "the center logged nothing"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_a_live_flow_logs_ids_and_never_personal_data_or_secrets(tmp_path, make_softhsm_token):
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir)]).returncode == 0
    center = CenterProcess(data_dir=data_dir, port=free_port())
    center.start()
    member, store = (
        WalletUser(tmp_path, make_softhsm_token, "m"),
        WalletUser(tmp_path, make_softhsm_token, "s"),
    )
    member.init()
    store.init("--key-type", "ed25519")
    enrolled = member.enroll_member(center)  # Hanako Yamada, 1-1 Chiyoda, Tokyo, born 1985-06-15
    assert enrolled.returncode == 0, enrolled.stderr
    member_id = json.loads(enrolled.stdout)["member_id"]
    store_id = store.json(
        "enroll",
        "--center",
        center.url,
        "--center-cert",
        str(center.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya",
        "--bank-account",
        "JP-0009-7654321",
    )["member_id"]
    topup_id = member.json("topup", "5000", "--method", "bank")["topup_id"]
    assert center_cli(center, "operator", "confirm-topup", topup_id)["status"] == "confirmed"
    paid = member.json("pay", "--store", store_id, "--amount", "1200", "--order", "ORDER-77", "--yes")
    assert (
        member.run("pay", "--store", store_id, "--amount", "9999", "--order", "ORDER-78", "--yes").returncode
        != 0
    )
    context = pinned_ssl_context(center.cert.read_bytes())
    with httpx.Client(base_url=center.url, verify=context, timeout=30) as http:
        # Personal data in a refused body, a raw path, a cookie and a bearer token.
        assert (
            http.post(
                "/v1/enroll", json={"name": "Hanako Yamada", "address": "1-1 Chiyoda, Tokyo"}
            ).status_code
            == 422
        )
        assert http.get("/v1/stores/Hanako%20Yamada").status_code == 404
        http.get(
            "/healthz",
            headers={"cookie": "session=COOKIE-VALUE-1234", "authorization": "Bearer TOKEN-VALUE-5678"},
        )
    center.stop()

    events = read_log(tmp_path / f"center-{center.port}.log")
    names = [event["event"] for event in events]
    assert names[0] == "serve_start" and names[-1] == "serve_stop"
    assert {"worker_start", "worker_stop", "request"} <= set(names)
    requests = [event for event in events if event["event"] == "request"]
    assert all(set(event) >= REQUEST_KEYS for event in requests)
    enroll = [e for e in requests if e["route"] == "/v1/enroll" and e["status"] == 200]
    assert member_id in {e.get("party_id") for e in enroll} and all(len(e["kid"]) == 64 for e in enroll)
    pays = [e for e in requests if e["route"] == "/v1/payments"]
    assert [(e["status"], e.get("error")) for e in pays] == [(200, None), (409, "insufficient_funds")]
    assert pays[0]["msg_id"] and pays[0]["kid"] and paid["balance_minor"] == 3_800
    stores = [(e["status"], e.get("error")) for e in requests if e["route"] == "/v1/stores/{store_id}"]
    assert (404, "unknown_payee") in stores and (200, None) in stores  # the wallet looks the payee up first

    text = (tmp_path / f"center-{center.port}.log").read_text()
    secrets = [
        (data_dir / "secrets" / name).read_text().strip()
        for name in ("token-pin", "token-so-pin", "webhook-secret")
    ]
    tls_key_body = (data_dir / "tls" / "key.pem").read_text().splitlines()[1]
    wallet_secrets = [
        Path(path).read_text().strip() for user in (member, store) for path in user.files.values()
    ]
    forbidden = [
        "Hanako",
        "Yamada",
        "Chiyoda",
        "1985-06-15",
        "Corner Shop",
        "Shibuya",
        "JP-0009-7654321",
        "ORDER-77",
        "COOKIE-VALUE-1234",
        "TOKEN-VALUE-5678",
        tls_key_body,
        *secrets,
        *wallet_secrets,
    ]
    leaked = [value for value in forbidden if value and value in text]
    assert leaked == []


def format_with(formatter: logging.Formatter, record_maker) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("tokenpay")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.DEBUG)  # setLevel, not .level =: it clears isEnabledFor's cache
    try:
        record_maker()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return stream.getvalue()


def raise_with_personal_data() -> None:
    try:
        raise ValueError("INSERT INTO parties ... [parameters: ('Hanako Yamada', '1-1 Chiyoda')]")
    except ValueError:
        logging.getLogger("tokenpay").exception("internal failure")


def test_exceptions_are_logged_by_type_and_frames_never_their_message():
    for formatter in (JsonFormatter(), TextFormatter()):
        out = format_with(formatter, raise_with_personal_data)
        assert "ValueError" in out and "raise_with_personal_data" in out
        assert "Hanako" not in out and "Chiyoda" not in out
    line = json.loads(format_with(JsonFormatter(), raise_with_personal_data))
    assert line["error_type"] == "ValueError" and line["level"] == "error" and line["logger"] == "tokenpay"


def test_text_format_is_one_readable_line_per_event():
    out = format_with(
        TextFormatter(),
        lambda: log_event(
            "request",
            route="/v1/payments",
            status=409,
            error="insufficient_funds",
            kid=None,
            note="two words",
        ),
    )
    assert out.count("\n") == 1
    head, rest = out.split(" ", 1)
    assert head.endswith("Z") and rest.startswith("INFO request ")
    assert (
        'route=/v1/payments status=409 error=insufficient_funds note="two words"' in out and "kid" not in out
    )


def test_log_config_routes_center_and_uvicorn_to_one_stderr_handler():
    config = logging_config("json", "warning")
    assert config["formatters"]["main"]["()"] == "center.ops.logs.JsonFormatter"
    assert config["loggers"]["tokenpay"]["level"] == "WARNING" and config["loggers"]["uvicorn"][
        "handlers"
    ] == ["stderr"]
    assert config["loggers"]["uvicorn.access"]["handlers"] == []  # access lines would carry client addresses
