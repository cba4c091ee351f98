"""`center`: the settlement center's command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from center.config import CenterConfig
from token_wallet.cliutil import CliError, emit, run_cli
from token_wallet.tokens.base import TokenError

app = typer.Typer(help="tokenpay settlement center", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The center's data directory")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]


@app.command()
def init(
    data_dir: DataDir,
    db: Annotated[Optional[str], typer.Option("--db", help="Database URL (default: SQLite in the data dir)")] = None,
    currency: Annotated[str, typer.Option(help="ISO 4217 currency of this center")] = "JPY",
    center_id: Annotated[Optional[str], typer.Option(help="Center id used as audience (default: random)")] = None,
    pkcs11_module: Annotated[Optional[str], typer.Option(help="PKCS#11 module (default: SoftHSM)")] = None,
    token_label: Annotated[Optional[str], typer.Option(help="Use this existing token instead of a new SoftHSM one")] = None,
    token_pin_file: Annotated[Optional[str], typer.Option(help="File holding that token's user PIN")] = None,
    tls_name: Annotated[Optional[list[str]], typer.Option(help="Extra DNS name or IP for the TLS certificate")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a center: configuration, database schema, token signing key, TLS certificate."""
    from center.bootstrap import init_center

    config = init_center(data_dir, db_url=db, currency=currency, center_id=center_id, pkcs11_module=pkcs11_module,
                         token_label=token_label, token_pin_file=token_pin_file, tls_names=tls_name or [])
    summary = {"center_id": config.center_id, "currency": config.currency, "data_dir": str(config.data_dir),
               "cert": str(config.cert_file), "db": _redact_url(config.db_url),
               "receipt_kid": _kid(config)}
    emit(as_json, summary, lambda out: out.print(
        f"center [bold]{config.center_id}[/] created in {config.data_dir}\n"
        f"  currency {config.currency}, database {summary['db']}\n"
        f"  wallets pin {config.cert_file}"))


@app.command()
def serve(
    data_dir: DataDir,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8443,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
) -> None:
    """Serve the center's API over HTTPS."""
    import uvicorn

    config = _load_config(data_dir)
    os.environ["CENTER_DATA_DIR"] = str(config.data_dir)
    uvicorn.run("center.asgi:create_from_environment", factory=True, host=host, port=port, workers=workers,
                ssl_certfile=str(config.cert_file), ssl_keyfile=config.tls_key_file, log_level="warning",
                access_log=False)


def _load_config(data_dir: Path) -> CenterConfig:
    try:
        return CenterConfig.load(data_dir)
    except FileNotFoundError as error:
        raise CliError(str(error)) from None


def _kid(config: CenterConfig) -> str:
    from center.bootstrap import key_record_from_json
    from paywire.algorithms import key_id

    return key_id(key_record_from_json(config.signing_key).spki_der)


def _redact_url(url: str) -> str:
    # Never print a database password.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main() -> None:
    from sqlalchemy.exc import OperationalError

    run_cli(app, (TokenError, OperationalError, FileNotFoundError, PermissionError))
