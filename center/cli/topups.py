"""`center operator confirm-topup|decline-topup`: an operator's decision on a pending top-up.

Assembled into the `operator` group by center.cli.main. The center's modules are imported inside the
commands (center.cli.common says why).
"""

from __future__ import annotations

from pathlib import Path

import typer

from center.cli.common import DataDir, JsonFlag, api_call, load_config, open_engine, operator_name
from hostkit.cli import emit
from paywire.money import format_amount

app = typer.Typer()


@app.command("confirm-topup")
def confirm_topup(topup_id: str, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Confirm a pending top-up: the member's balance is credited."""
    _decide(topup_id, "confirm", data_dir, as_json)


@app.command("decline-topup")
def decline_topup(topup_id: str, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Decline a pending top-up: nothing is credited."""
    _decide(topup_id, "decline", data_dir, as_json)


def _decide(topup_id: str, decision: str, data_dir: Path, as_json: bool) -> None:
    from center.ledger.funding import decide_topup
    from center.pipeline.types import now_ms

    config = load_config(data_dir)
    engine = open_engine(data_dir)
    view = api_call(
        lambda: decide_topup(
            engine, topup_id, decision, decided_by=f"operator:{operator_name()}", now_ms=now_ms()
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"top-up {view['topup_id']} {view['status']}"
            + (" (already)" if view["repeated"] else "")
            + f": {format_amount(view['amount_minor'], config.currency)} for {view['member_id']} "
            f"by {view['method']}"
        ),
    )
