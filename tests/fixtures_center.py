"""Fixtures for the center: databases (SQLite and PostgreSQL), an in-process
center on a SoftHSM token, and real center processes over HTTPS.

Registered in conftest.py (pytest_plugins). PostgreSQL tests skip locally when no server
answers, and fail under CI=true, where the README's test command starts one.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from support import (
    CenterProcess,
    create_pg_database,
    drop_pg_database,
    free_port,
    in_ci,
    pg_reachable,
    run_cli,
)

from center.api.app import create_app
from center.keys.identity import CenterSigner
from center.pipeline.service import Center
from center.storage.db import make_engine, migrate
from tokens.base import KeyMode, KeyType
from tokens.pkcs11_token import open_pkcs11_token

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    available = pg_reachable()
    if not available and in_ci():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is required under CI=true and does not answer")
    return available


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path, postgres_available):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'center.db'}"
        return
    if not postgres_available:
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def center_token(make_softhsm_token, softhsm_module):
    label, _so_pin, pin = make_softhsm_token()
    token = open_pkcs11_token(softhsm_module, label=label)
    key = token.generate_key(KeyType.P256, pin, mode=KeyMode.RESIDENT, label="center-receipts")
    return token, key, pin


@pytest.fixture(scope="session")
def center_token_signer(center_token):
    token, key, pin = center_token
    signer = token.resident_signer(key, pin)
    yield signer.sign
    signer.close()


@pytest.fixture
def center(db_url, center_token, center_token_signer) -> Center:
    _token, key, _pin = center_token
    engine = make_engine(db_url)
    migrate(engine)
    yield Center(engine=engine, signer=CenterSigner(center_token_signer, key, "center-test"), currency="JPY")
    engine.dispose()


@pytest.fixture
def api(center) -> TestClient:
    with TestClient(create_app(center)) as client:
        yield client


@pytest.fixture
def live_center(tmp_path, db_url):
    """A center made by `center init` and served by `center serve` over HTTPS."""
    data_dir = tmp_path / "center"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url, "--currency", "JPY"])
    assert result.returncode == 0, result.stderr
    process = CenterProcess(data_dir=data_dir, port=free_port())
    process.start()
    yield process
    process.stop()
