"""`center ledger check`, `center audit verify|export|verify-export`, `center payouts export|settle`: the
money and its trail, checked and handed to outsiders (auditors, the bank).

The center's modules are imported inside the commands (center.cli.common says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from center.cli.common import DataDir, JsonFlag, api_call, load_config, open_engine
from hostkit.cli import CliError, emit

ledger_app = typer.Typer(help="Ledger checks", no_args_is_help=True)
audit_app = typer.Typer(
    help="The audit trail: hash chain, Merkle tree, signed tree heads", no_args_is_help=True
)
payouts_app = typer.Typer(help="Store payouts to bank accounts", no_args_is_help=True)


@ledger_app.command("check")
def ledger_check(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Recompute every balance from the transfers; exit 1 on any difference."""
    from center.ledger.book import check_ledger

    with open_engine(data_dir).connect() as conn:
        report = check_ledger(conn)
    emit(
        as_json,
        report.to_json(),
        lambda out: out.print(
            f"ledger {'OK' if report.ok else 'BROKEN'}: {report.accounts} accounts, "
            f"{report.transfers} transfers, sum {report.total_minor}"
            + "".join(f"\n  {p}" for p in report.problems)
        ),
    )
    if not report.ok:
        raise typer.Exit(code=1)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Check the hash chain, the Merkle tree and every signed tree head over a snapshot (exit 1 on a
    problem, naming the first); payments go on meanwhile."""
    from center.ledger.audit_verify import verify_log

    config = load_config(data_dir)
    report = verify_log(open_engine(data_dir), center_key(config))
    document = report.to_json()
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"audit log OK: {report.entries} entries, {report.heads_checked} tree heads verified, "
            f"{report.unsigned_entries} entries after the newest tree head"
            if report.ok
            else "audit log BROKEN"
            + (f" at entry {report.first_bad_seq}" if report.first_bad_seq else "")
            + f": {report.problem} ({report.entries} entries before it are intact)"
        ),
    )
    if not report.ok:
        raise typer.Exit(code=1)


def center_key(config):
    """The key tree heads are signed with: the receipt key the center's certificate names."""
    from center.ledger.audit_tree_check import CenterKey

    try:
        return CenterKey.from_certificate(config.center_id, config.cert_file.read_bytes())
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read the center certificate {config.cert_file}: {error}") from None


@audit_app.command("export")
def audit_export(file: Path, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Write what an outsider needs to check every signature offline."""
    from center.ledger.audit_export import export_audit

    config = load_config(data_dir)
    summary = api_call(
        lambda: export_audit(
            open_engine(data_dir), file, center_id=config.center_id, cert_pem=config.cert_file.read_bytes()
        )
    )
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"wrote {summary['entries']} audit entries, {summary['keys']} keys and "
            f"{summary['tree_heads']} tree heads to {file}"
        ),
    )


@audit_app.command("verify-export")
def audit_verify_export(
    file: Path,
    as_json: JsonFlag = False,
    center_cert: Annotated[
        Path | None,
        typer.Option(help="The center's certificate as you know it (PEM); the export's must be the same"),
    ] = None,
) -> None:
    """Check an exported audit file offline: chain, every signature, every signed tree head (exit 1 on a
    problem)."""
    from center.ledger.audit_export_verify import verify_export

    pinned = center_cert.read_bytes() if center_cert is not None else None
    report = verify_export(file, center_cert_pem=pinned)
    emit(
        as_json,
        report,
        lambda out: out.print(
            f"export OK: {report['entries']} entries, {report['signatures_checked']} signatures and "
            f"{report['heads_checked']} tree heads verified, "
            f"{report['entries_after_newest_head']} entries after the newest tree head"
            if report["ok"]
            else f"export BROKEN: {report['problem']}"
        ),
    )
    if not report["ok"]:
        raise typer.Exit(code=1)


@payouts_app.command("export")
def payouts_export(
    file: Path,
    data_dir: DataDir,
    as_json: JsonFlag = False,
    batch_id: Annotated[
        str | None, typer.Option(help="Re-create the file of an exported batch (lost file)")
    ] = None,
    settlement_account: Annotated[
        str | None, typer.Option(help="The center's debtor account (default: center id)")
    ] = None,
) -> None:
    """Write an ISO 20022 pain.001 credit-transfer file for the pending payouts."""
    from center.ledger.payouts import export_payouts
    from center.pipeline.types import now_ms

    config = load_config(data_dir)
    summary = api_call(
        lambda: export_payouts(
            open_engine(data_dir),
            file,
            center_id=config.center_id,
            currency=config.currency,
            now_ms=now_ms(),
            batch_id=batch_id,
            settlement_account=settlement_account,
        )
    )
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"wrote {summary['count']} payout(s), {summary['total_minor']} minor units, "
            f"batch {summary['batch_id']} to {file}"
            if summary["count"]
            else "no pending payouts; no file written"
        ),
    )


@payouts_app.command("settle")
def payouts_settle(
    data_dir: DataDir,
    as_json: JsonFlag = False,
    batch_id: Annotated[str | None, typer.Option(help="Settle only this exported batch")] = None,
) -> None:
    """Mark the exported payouts as paid by the bank."""
    from center.ledger.payouts import settle_payouts
    from center.pipeline.types import now_ms

    summary = api_call(lambda: settle_payouts(open_engine(data_dir), now_ms=now_ms(), batch_id=batch_id))
    emit(
        as_json,
        summary,
        lambda out: out.print(f"settled {summary['count']} payout(s), {summary['total_minor']} minor units"),
    )
