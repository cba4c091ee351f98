"""`center`: the settlement center's command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from center.storage.config import CenterConfig
from hostkit.cli import CliError, emit, run_cli
from tokens.base import TokenError

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
    issuer_ca: Annotated[Optional[Path], typer.Option(help="Card issuer's CA certificate (PEM) to trust")] = None,
    require_certified_keys: Annotated[bool, typer.Option(
        "--require-certified-keys", help="Enroll only keys certified by the --issuer-ca")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a center: configuration, database schema, token signing key, TLS certificate."""
    from center.ops.bootstrap import init_center

    os.umask(0o077)  # everything this process creates is the owner's alone (init tightens the tree anyway)
    config = init_center(data_dir, db_url=db, currency=currency, center_id=center_id, pkcs11_module=pkcs11_module,
                         token_label=token_label, token_pin_file=token_pin_file, tls_names=tls_name or [],
                         issuer_ca=issuer_ca, require_certified_keys=require_certified_keys)
    summary = {"center_id": config.center_id, "currency": config.currency, "data_dir": str(config.data_dir),
               "cert": str(config.cert_file), "db": _redact_url(config.db_url),
               "receipt_kid": _kid(config), "issuer_policy": config.issuer_policy}
    emit(as_json, summary, lambda out: out.print(
        f"center {config.center_id} created in {config.data_dir}\n"
        f"  currency {config.currency}, database {summary['db']}\n"
        f"  wallets pin {config.cert_file}"))


@app.command()
def serve(
    data_dir: DataDir,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8443,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
    log_format: Annotated[str, typer.Option(help="Log lines on stderr: json or text")] = "json",
    log_level: Annotated[str, typer.Option(help="debug, info (one line per request), warning or error")] = "info",
    metrics_port: Annotated[Optional[int], typer.Option(
        min=1, max=65535, help="Serve GET /metrics (Prometheus) in plain HTTP on 127.0.0.1:PORT; off by default")] = None,
) -> None:
    """Serve the center's API over HTTPS."""
    import uvicorn

    from center.ops.bootstrap import check_private_files
    from center.ops.logs import log_event
    from center.ops.observability import prepare_serve

    # SQLite's -wal/-shm files, metrics files and anything else the server and its workers create: 0600.
    os.umask(0o077)
    config = _load_config(data_dir)
    check_private_files(config)  # a database or secret others can read stops here, in one line, before any worker
    cli_issuer.check_configuration(config)  # a broken issuer setup stops here, in one line, not in a worker
    _checked_engine(config, data_dir).dispose()  # an outdated schema stops here, in one line
    os.environ["CENTER_DATA_DIR"] = str(config.data_dir)
    # Logging set up, this server's metrics directory made and the metrics listener started before any worker.
    log_config, metrics_dir, listener = prepare_serve(
        config.data_dir, center_id=config.center_id, db_url=config.db_url, log_format=log_format,
        log_level=log_level, host=host, port=port, workers=workers, metrics_port=metrics_port)
    try:
        uvicorn.run("center.api.asgi:create_from_environment", factory=True, host=host, port=port, workers=workers,
                    ssl_certfile=str(config.cert_file), ssl_keyfile=config.tls_key_file, log_level=log_level,
                    log_config=log_config, access_log=False,
                    # The client address is the TCP peer; X-Forwarded-For counts only from
                    # the configured trusted proxies (center.console.auth), never by default.
                    proxy_headers=False)
    finally:
        if listener is not None:
            listener.shutdown()
        metrics_dir.release()  # only this server's directory: another one's counters stay
        log_event("serve_stop", pid=os.getpid())


@app.command()
def migrate(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Upgrade the database schema to what this version of the center needs (after installing a new one)."""
    from center.storage.db import current_revision, make_engine, migrate as upgrade, schema_status

    engine = make_engine(_load_config(data_dir).db_url)
    status = schema_status(engine)
    if status.state == "ahead":
        raise CliError(f"the database schema is at revision {status.current}, newer than this center knows "
                       f"({status.head}); run the center version that wrote it")
    upgrade(engine)  # one transaction: a failing step leaves the schema as it was
    after = current_revision(engine)
    summary = {"from_revision": status.current, "to_revision": after, "changed": status.current != after}
    emit(as_json, summary, lambda out: out.print(
        f"schema upgraded from {status.current} to {after}" if summary["changed"]
        else f"schema already at {status.current}; nothing to do"))


def _check_schema(engine, data_dir: Path) -> None:
    """Refuse, in one line, a database whose schema this code does not match (before serving or acting on it)."""
    from sqlalchemy.exc import OperationalError

    from center.storage.db import schema_status

    try:
        status = schema_status(engine)
    except OperationalError as error:  # the message names host and port, never the password
        reason = str(error.orig).strip().splitlines()[0] if error.orig else error.__class__.__name__
        raise CliError(f"cannot reach the database {_redact_url(str(engine.url.render_as_string(hide_password=True)))}"
                       f": {reason}") from None
    if status.state == "behind":
        raise CliError(f"the database schema is at revision {status.current} and this center needs {status.head}; "
                       f"back it up (center backup) and run: center migrate --data-dir {data_dir}")
    if status.state == "ahead":
        raise CliError(f"the database schema is at revision {status.current}, newer than this center knows "
                       f"({status.head}); run the center version that wrote it")
    if status.state == "empty":
        raise CliError(f"the database of {data_dir} holds no center schema; check db_url in its config.json")


operator_app = typer.Typer(help="Operator actions on this center's data directory", no_args_is_help=True)
ledger_app = typer.Typer(help="Ledger checks", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail", no_args_is_help=True)
payouts_app = typer.Typer(help="Store payouts to bank accounts", no_args_is_help=True)
app.add_typer(operator_app, name="operator")
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")
app.add_typer(payouts_app, name="payouts")


@operator_app.command("confirm-topup")
def confirm_topup(topup_id: str, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Confirm a pending top-up: the member's balance is credited."""
    _decide(topup_id, "confirm", data_dir, as_json)


@operator_app.command("decline-topup")
def decline_topup(topup_id: str, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Decline a pending top-up: nothing is credited."""
    _decide(topup_id, "decline", data_dir, as_json)


def _decide(topup_id: str, decision: str, data_dir: Path, as_json: bool) -> None:
    from center.ledger.funding import decide_topup
    from center.pipeline.service import now_ms

    from paywire.money import format_amount

    config = _load_config(data_dir)
    engine = _engine(data_dir)
    view = _api_call(lambda: decide_topup(engine, topup_id, decision, decided_by=f"operator:{_operator_name()}",
                                          now_ms=now_ms()))
    emit(as_json, view, lambda out: out.print(
        f"top-up {view['topup_id']} {view['status']}" + (" (already)" if view["repeated"] else "")
        + f": {format_amount(view['amount_minor'], config.currency)} for {view['member_id']} by {view['method']}"))


@operator_app.command("revoke-key")
def revoke_key_command(
    kid: Annotated[str, typer.Argument(help="The key id (64 hex digits) of the lost or compromised key")],
    data_dir: DataDir,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "reported lost",
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: every message it signs from now on is refused; its history stays."""
    from center.keys.admin import revoke_key
    from center.pipeline.service import now_ms

    view = _api_call(lambda: revoke_key(_engine(data_dir), kid, reason=reason,
                                        decided_by=f"operator:{_operator_name()}", now_ms=now_ms()))
    emit(as_json, view, lambda out: out.print(
        f"key {kid[:16]}... of {view['member_id']} " + ("was already revoked" if view["repeated"] else "revoked")))


@ledger_app.command("check")
def ledger_check(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Recompute every balance from the transfers; exit 1 on any difference."""
    from center.ledger.book import check_ledger

    with _engine(data_dir).connect() as conn:
        report = check_ledger(conn)
    emit(as_json, report.to_json(), lambda out: out.print(
        f"ledger {'OK' if report.ok else 'BROKEN'}: {report.accounts} accounts, {report.transfers} transfers, "
        f"sum {report.total_minor}" + "".join(f"\n  {p}" for p in report.problems)))
    if not report.ok:
        raise typer.Exit(code=1)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Walk the hash chain; report the first entry changed, removed or reordered (exit 1)."""
    from center.ledger.audit import verify_chain

    with _engine(data_dir).connect() as conn:
        checked, problem = verify_chain(conn)
    document = {"ok": problem is None, "entries": checked,
                "first_bad_seq": problem.seq if problem else None, "problem": problem.reason if problem else None}
    emit(as_json, document, lambda out: out.print(
        f"audit chain OK: {checked} entries" if problem is None
        else f"audit chain BROKEN at entry {problem.seq}: {problem.reason} ({checked} entries before it are intact)"))
    if problem is not None:
        raise typer.Exit(code=1)


@audit_app.command("export")
def audit_export(file: Path, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Write what an outsider needs to check every signature offline."""
    from center.ledger.audit_export import export_audit

    config = _load_config(data_dir)
    summary = _api_call(lambda: export_audit(_engine(data_dir), file, center_id=config.center_id,
                                             cert_pem=config.cert_file.read_bytes()))
    emit(as_json, summary, lambda out: out.print(f"wrote {summary['entries']} audit entries and "
                                                 f"{summary['keys']} keys to {file}"))


@audit_app.command("verify-export")
def audit_verify_export(file: Path, as_json: JsonFlag = False) -> None:
    """Check an exported audit file offline: chain and every signature (exit 1 on a problem)."""
    from center.ledger.audit_export import verify_export

    report = verify_export(file)
    emit(as_json, report, lambda out: out.print(
        f"export OK: {report['entries']} entries, {report['signatures_checked']} signatures verified"
        if report["ok"] else f"export BROKEN: {report['problem']}"))
    if not report["ok"]:
        raise typer.Exit(code=1)


@payouts_app.command("export")
def payouts_export(
    file: Path, data_dir: DataDir, as_json: JsonFlag = False,
    batch_id: Annotated[Optional[str], typer.Option(help="Re-create the file of an exported batch (lost file)")] = None,
    settlement_account: Annotated[Optional[str], typer.Option(help="The center's debtor account (default: center id)")] = None,
) -> None:
    """Write an ISO 20022 pain.001 credit-transfer file for the pending payouts."""
    from center.ledger.payouts import export_payouts
    from center.pipeline.service import now_ms

    config = _load_config(data_dir)
    summary = _api_call(lambda: export_payouts(_engine(data_dir), file, center_id=config.center_id,
                                               currency=config.currency, now_ms=now_ms(), batch_id=batch_id,
                                               settlement_account=settlement_account))
    emit(as_json, summary, lambda out: out.print(
        f"wrote {summary['count']} payout(s), {summary['total_minor']} minor units, batch {summary['batch_id']} "
        f"to {file}" if summary["count"] else "no pending payouts; no file written"))


@payouts_app.command("settle")
def payouts_settle(
    data_dir: DataDir, as_json: JsonFlag = False,
    batch_id: Annotated[Optional[str], typer.Option(help="Settle only this exported batch")] = None,
) -> None:
    """Mark the exported payouts as paid by the bank."""
    from center.ledger.payouts import settle_payouts
    from center.pipeline.service import now_ms

    summary = _api_call(lambda: settle_payouts(_engine(data_dir), now_ms=now_ms(), batch_id=batch_id))
    emit(as_json, summary, lambda out: out.print(
        f"settled {summary['count']} payout(s), {summary['total_minor']} minor units"))


def _engine(data_dir: Path):
    return _checked_engine(_load_config(data_dir), data_dir)


def _checked_engine(config: CenterConfig, data_dir: Path):
    from center.storage.db import make_engine

    engine = make_engine(config.db_url)
    _check_schema(engine, data_dir)
    return engine


def _api_call(action):
    from center.errors import ApiError

    try:
        return action()
    except ApiError as error:
        raise CliError(f"{error.message} ({error.code})") from None


def _operator_name() -> str:
    import getpass

    try:
        return getpass.getuser()[:48]
    except (KeyError, OSError):
        return "local"


def _load_config(data_dir: Path) -> CenterConfig:
    try:
        return CenterConfig.load(data_dir)
    except FileNotFoundError as error:
        raise CliError(str(error)) from None


def _kid(config: CenterConfig) -> str:
    from paywire.algorithms import key_id
    from tokens.base import KeyRecord

    return key_id(KeyRecord.from_json(config.signing_key).spki_der)


def _redact_url(url: str) -> str:
    # Never print a database password.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


from center.cli import issuer as cli_issuer  # noqa: E402,F401  (registers `center issuer`)
from center.cli import operators as cli_operators  # noqa: E402,F401  (registers `center operator add|list`)
from center.cli import keys as cli_keys  # noqa: E402,F401  (registers `center operator bind-key|reject-key|list-keys`)
from center.cli import backup as cli_backup  # noqa: E402,F401  (registers `center backup` and `center restore`)


def main() -> None:
    from sqlalchemy.exc import OperationalError

    run_cli(app, (TokenError, OperationalError, FileNotFoundError, PermissionError))
