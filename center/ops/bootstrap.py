"""`center init` and loading a configured center: data dir, token key, TLS, schema."""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from center.keys import issuer_setup
from center.keys.identity import CenterSigner, make_tls_certificate
from center.keys.issuer_policy import policy_of
from center.ops.metrics import METRICS_DIR_NAME
from center.pipeline.service import Center
from center.storage.config import CenterConfig
from center.storage.db import make_engine, migrate
from center.storage.files import first_open_path, make_tree_private
from hostkit.cli import CliError
from hostkit.private_files import access_problem, make_private, write_new_file
from paywire.money import MINOR_EXPONENT
from tokens.base import KeyMode, KeyRecord, KeyType
from tokens.pkcs11_token import open_pkcs11_token
from tokens.softhsm import find_softhsm_module, init_softhsm_token, write_softhsm_config

CENTER_TOKEN_LABEL = "tokenpay-center"
CENTER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{3,64}")


def init_center(
    data_dir: Path,
    *,
    db_url: str | None,
    currency: str,
    center_id: str | None,
    pkcs11_module: str | None,
    token_label: str | None,
    token_pin_file: str | None,
    tls_names: list[str],
    issuer_ca: Path | None = None,
    require_certified_keys: bool = False,
) -> CenterConfig:
    data_dir = data_dir.resolve()
    _check_fresh_dir(data_dir)
    if token_pin_file and (problem := access_problem(Path(token_pin_file))) is not None:
        raise CliError(f"the token PIN file must be yours alone: {problem}")  # `serve` would refuse it
    issuer_trust = issuer_setup.read_init_trust(issuer_ca, require_certified_keys, int(time.time()))
    if currency not in MINOR_EXPONENT:
        raise CliError(
            f"currency {currency!r} is not supported: use an ISO 4217 code such as "
            f"{', '.join(sorted(MINOR_EXPONENT))}"
        )
    center_id = center_id or f"center-{secrets.token_hex(4)}"
    if not CENTER_ID_PATTERN.fullmatch(center_id):
        raise CliError("center id must be 3-64 letters, digits or . _ : -")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    make_private(data_dir)  # an existing 0755 directory too, before anything secret is written into it
    config = CenterConfig(
        data_dir=data_dir,
        center_id=center_id,
        currency=currency,
        db_url=db_url or f"sqlite:///{data_dir / 'center.db'}",
        pkcs11_module=pkcs11_module or find_softhsm_module(),
        token_label=token_label or CENTER_TOKEN_LABEL,
        token_pin_file=str(Path(token_pin_file).resolve()) if token_pin_file else "",
        softhsm_conf=None,
    )
    if token_label is None:
        _make_own_softhsm_token(config)
    elif not token_pin_file:
        raise CliError(
            "--token-label needs --token-pin-file (the center reads its token PIN from it when serving)"
        )
    key = _generate_signing_key(config)
    config.signing_key = key.to_json()
    _write_tls(config, key.spki_der, tls_names)
    config.webhook_secret_file = str(data_dir / "secrets" / "webhook-secret")
    _write_secret(Path(config.webhook_secret_file), secrets.token_hex(32).encode())
    migrate(make_engine(config.db_url))
    issuer_setup.install(config, issuer_trust, issuer_setup.choose_policy(require_certified_keys, False))
    config.save()
    # Whatever wrote them (SoftHSM, SQLite, a caller's umask): 0700 directories, 0600 files.
    make_tree_private(data_dir)
    for path in _sqlite_files(config.db_url):  # a SQLite file named by --db outside the data directory
        if path.exists():
            make_private(path)
    return config


def check_private_files(config: CenterConfig) -> None:
    """Before serving: CliError naming the first secret that group or others can access, and its chmod.

    The data directory and everything in it but the certificate (public: wallets pin it) and the
    metrics files (`center serve` replaces them), the SQLite database with its -wal/-shm/-journal
    files and the token PIN file wherever they are.
    """
    skip = frozenset({config.cert_file, config.data_dir / METRICS_DIR_NAME})
    extra = (*_sqlite_files(config.db_url), *([Path(config.token_pin_file)] if config.token_pin_file else []))
    try:
        problem = first_open_path(config.data_dir, skip=skip, extra=extra)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot check the permissions of {config.data_dir}: {error}") from None
    if problem is not None:
        raise CliError(f"refusing to serve: {problem}")


def _sqlite_files(db_url: str) -> tuple[Path, ...]:
    url = make_url(db_url)
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return ()
    path = Path(database).absolute()
    return (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")))


def load_center(config: CenterConfig) -> Center:
    config.apply_token_environment()
    token = open_pkcs11_token(config.pkcs11_module, label=config.token_label)
    key = KeyRecord.from_json(config.signing_key)
    signer = CenterSigner(token.resident_signer(key, config.token_pin()).sign, key, config.center_id)
    webhook_secret = (
        Path(config.webhook_secret_file).read_bytes().strip() if config.webhook_secret_file else None
    )
    return Center(
        engine=make_engine(config.db_url),
        read_engine=make_engine(config.read_db_url) if config.read_db_url else None,
        signer=signer,
        currency=config.currency,
        webhook_secret=webhook_secret,
        issuer_policy=policy_of(config),
    )


def _check_fresh_dir(data_dir: Path) -> None:
    if (data_dir / "config.json").exists():
        raise CliError(f"{data_dir} already holds a center; choose an empty directory")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise CliError(f"{data_dir} is not empty; choose an empty or new directory")


def _make_own_softhsm_token(config: CenterConfig) -> None:
    secrets_dir = config.data_dir / "secrets"
    pin, so_pin = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    _write_secret(secrets_dir / "token-pin", pin.encode())
    _write_secret(secrets_dir / "token-so-pin", so_pin.encode())
    conf = write_softhsm_config(config.data_dir / "softhsm")
    init_softhsm_token(conf, config.token_label, so_pin, pin)
    config.softhsm_conf = str(conf)
    config.token_pin_file = str(secrets_dir / "token-pin")


def _generate_signing_key(config: CenterConfig) -> KeyRecord:
    config.apply_token_environment()
    token = open_pkcs11_token(config.pkcs11_module, label=config.token_label)
    # Resident: the center's key never leaves its token, not even wrapped.
    return token.generate_key(
        KeyType.P256, config.token_pin(), mode=KeyMode.RESIDENT, label="tokenpay-center-receipts"
    )


def _write_tls(config: CenterConfig, receipt_spki: bytes, extra_names: list[str]) -> None:
    dns_names = sorted({"localhost", socket.gethostname(), *[n for n in extra_names if not _is_ip(n)]})
    ips = sorted({"127.0.0.1", "::1", *[n for n in extra_names if _is_ip(n)]})
    cert_pem, key_pem = make_tls_certificate(config.center_id, receipt_spki, dns_names, ips)
    key_file = config.data_dir / "tls" / "key.pem"
    _write_secret(key_file, key_pem)
    # Public (wallets pin it; hand out copies freely), yet 0600 here like everything in D:
    # make_tree_private would tighten it anyway, and `serve` does not mind if it is opened up.
    write_new_file(config.cert_file, cert_pem)
    config.tls_key_file = str(key_file)


def _write_secret(path: Path, data: bytes) -> None:
    """A new file in a fresh data directory (secrets/, tls/ made 0700 on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_new_file(path, data)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
