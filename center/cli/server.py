"""`center init`, `center serve` and `center migrate`: make a center, run it, upgrade its schema.

The center's modules are imported inside the commands (center.cli.common says why).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from center.cli.common import DataDir, JsonFlag, checked_engine, load_config, redact_url, schema_ahead
from center.storage.config import CenterConfig
from hostkit.cli import CliError, emit
from paywire.algorithms import key_id
from tokens.base import KeyRecord

app = typer.Typer()

# Everything these commands create (config, keys, SQLite's -wal/-shm files, metrics files) is the
# owner's alone: init tightens the tree anyway, serve's workers inherit the mask.
OWNER_ONLY_UMASK = 0o077
MAX_WORKERS = 64


@app.command()
def init(
    data_dir: DataDir,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: SQLite in the data dir)")
    ] = None,
    read_db: Annotated[
        str | None,
        typer.Option(
            "--read-db",
            help="A standby's database URL for the console's statistics and searches (default: the primary)",
        ),
    ] = None,
    currency: Annotated[str, typer.Option(help="ISO 4217 currency of this center")] = "JPY",
    center_id: Annotated[
        str | None, typer.Option(help="Center id used as audience (default: random)")
    ] = None,
    pkcs11_module: Annotated[str | None, typer.Option(help="PKCS#11 module (default: SoftHSM)")] = None,
    token_label: Annotated[
        str | None, typer.Option(help="Use this existing token instead of a new SoftHSM one")
    ] = None,
    token_pin_file: Annotated[str | None, typer.Option(help="File holding that token's user PIN")] = None,
    tls_name: Annotated[
        list[str] | None, typer.Option(help="Extra DNS name or IP for the TLS certificate")
    ] = None,
    issuer_ca: Annotated[
        Path | None, typer.Option(help="Card issuer's CA certificate (PEM) to trust")
    ] = None,
    require_certified_keys: Annotated[
        bool, typer.Option("--require-certified-keys", help="Enroll only keys certified by the --issuer-ca")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a center: configuration, database schema, token signing key, TLS certificate."""
    from center.ops.bootstrap import init_center

    read_url = (
        _checked_read_url(read_db, db or "") if read_db is not None else ""
    )  # before anything is written
    os.umask(OWNER_ONLY_UMASK)
    config = init_center(
        data_dir,
        db_url=db,
        currency=currency,
        center_id=center_id,
        pkcs11_module=pkcs11_module,
        token_label=token_label,
        token_pin_file=token_pin_file,
        tls_names=tls_name or [],
        issuer_ca=issuer_ca,
        require_certified_keys=require_certified_keys,
    )
    if read_url:
        config.read_db_url = read_url
        config.save()
    summary = {
        "center_id": config.center_id,
        "currency": config.currency,
        "data_dir": str(config.data_dir),
        "cert": str(config.cert_file),
        "db": redact_url(config.db_url),
        "receipt_kid": _receipt_kid(config),
        "issuer_policy": config.issuer_policy,
    }
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"center {config.center_id} created in {config.data_dir}\n"
            f"  currency {config.currency}, database {summary['db']}\n"
            f"  wallets pin {config.cert_file}"
        ),
    )


@app.command()
def serve(
    data_dir: DataDir,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8443,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Worker processes")] = 1,
    log_format: Annotated[str, typer.Option(help="Log lines on stderr: json or text")] = "json",
    log_level: Annotated[
        str, typer.Option(help="debug, info (one line per request), warning or error")
    ] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve GET /metrics (Prometheus) in plain HTTP on 127.0.0.1:PORT; off by default",
        ),
    ] = None,
) -> None:
    """Serve the center's API over HTTPS."""
    import uvicorn

    from center.ops.logs import log_event
    from center.ops.observability import prepare_serve

    os.umask(OWNER_ONLY_UMASK)
    config = load_config(data_dir)
    _check_before_workers(config, data_dir)
    os.environ["CENTER_DATA_DIR"] = str(config.data_dir)
    # Logging set up, this server's metrics directory made and the metrics listener started before any worker.
    log_config, metrics_dir, listener = prepare_serve(
        config.data_dir,
        center_id=config.center_id,
        db_url=config.db_url,
        log_format=log_format,
        log_level=log_level,
        host=host,
        port=port,
        workers=workers,
        metrics_port=metrics_port,
    )
    try:
        uvicorn.run(
            "center.api.asgi:create_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_certfile=str(config.cert_file),
            ssl_keyfile=config.tls_key_file,
            log_level=log_level,
            log_config=log_config,
            access_log=False,
            # The client address is the TCP peer; X-Forwarded-For counts only from
            # the configured trusted proxies (center.console.auth), never by default.
            proxy_headers=False,
        )
    finally:
        if listener is not None:
            listener.shutdown()
        metrics_dir.release()  # only this server's directory: another one's counters stay
        log_event("serve_stop", pid=os.getpid())


def _check_before_workers(config: CenterConfig, data_dir: Path) -> None:
    """What would make every worker fail stops here, in one line, before any worker starts: a database or
    secret others can read, an issuer setup that cannot be loaded (missing or broken CA file), request
    limits that make no sense (center.api.ratelimit), an outdated schema."""
    from center.api.ratelimit import limits_from_config
    from center.keys.issuer_setup import summary
    from center.ops.bootstrap import check_private_files

    check_private_files(config)
    summary(config)
    try:
        limits_from_config(config)
    except ValueError as error:
        raise CliError(str(error)) from None
    checked_engine(config, data_dir).dispose()


@app.command()
def migrate(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Upgrade the database schema to what this version of the center needs (after installing a new one)."""
    from center.storage.db import current_revision, make_engine, schema_status
    from center.storage.db import migrate as upgrade

    engine = make_engine(load_config(data_dir).db_url)
    status = schema_status(engine)
    if status.state == "ahead":
        raise schema_ahead(status.current, status.head)
    upgrade(engine)  # one transaction: a failing step leaves the schema as it was
    after = current_revision(engine)
    summary = {"from_revision": status.current, "to_revision": after, "changed": status.current != after}
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"schema upgraded from {status.current} to {after}"
            if summary["changed"]
            else f"schema already at {status.current}; nothing to do"
        ),
    )


def _checked_read_url(read_db: str, db_url: str) -> str:
    """Reads off the primary need a PostgreSQL standby of the same database (SQLite has no standby)."""
    if not db_url.startswith(("postgresql", "postgres:")) or not read_db.startswith(
        ("postgresql", "postgres:")
    ):
        raise CliError(
            "--read-db is a PostgreSQL standby's URL and needs --db on PostgreSQL too; leave it out on SQLite"
        )
    return read_db


def _receipt_kid(config: CenterConfig) -> str:
    """The key id of the center's receipt-signing key, as wallets will see it."""
    return key_id(KeyRecord.from_json(config.signing_key).spki_der)
