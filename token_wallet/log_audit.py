"""`wallet audit check`: is every receipt this wallet holds still in the center's log, and is the
log the center shows now an extension of every tree head this wallet has seen?

A receipt (paywire.receipts) proves its entry is in the tree of one signed tree head. Once the
request bytes have left the outbox the wallet keeps what later checks need: the entry's leaf
index and hash, the size and root of that head (`receipt_log_record`). Records are never changed
once written (token_wallet.vault_records), so the progress of the checks is a cursor per kind in the
vault's core, `log_checked`: every receipt (and notice) before it has been checked, and each run
starts where the last one stopped. The vault also keeps `log_head`: the newest head proved
consistent.

One check: fetch the newest signed head (its signature against the pinned center key), prove it
consistent with the kept head and with the head of every receipt not checked yet (one proof per
distinct size), and prove each such receipt's leaf included at the newest size. Only when all
hold are the receipts marked checked and the kept head moved forward; the first problem found
is named (one line) and kept in the history. A center that rewrote its history (entries changed,
hashes recomputed, a new head signed with its own key) cannot prove the old heads consistent with
the new one; a center that shows this member a fork cannot either.

Each proof is one GET authorized by a signed LOG_QUERY (one token signature, never audited, no
counter used): at most `max_queries` per run; what remains is said, and the next run goes on.
Receipts from before the log became a tree carry no proof: counted as not checkable. A store's
notices that came with their payment's inclusion proof are kept and checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from paywire import merkle
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.errors import WireError
from paywire.log_api import (
    CONSISTENCY_PATH,
    INCLUSION_PATH,
    MAX_QUERY_LIFETIME_S,
    QUERY_HEADER,
    STH_PATH,
    proof_hashes,
)
from paywire.messages import LOG_QUERY, build_payload, new_message_id
from paywire.receipts import LOG_RECEIPT_FORMAT, receipt_leaf
from paywire.tree_head import TreeHead, check_tree_head
from token_wallet.audit_cursor import LOG_KINDS, AuditTail
from token_wallet.center_url import CenterRefused, CenterUnreachable
from token_wallet.document import add_history, now_ms
from tokens.base import KeyRecord, Token

if TYPE_CHECKING:  # the HTTP client is imported where a request is made
    from token_wallet.client import CenterClient

# Sent at once; the center takes at most MAX_QUERY_LIFETIME_S.
QUERY_LIFETIME_S = 120
assert QUERY_LIFETIME_S <= MAX_QUERY_LIFETIME_S
# Each query is a token signature and a request, charged to the key's signed-request allowance
# at the center (a burst of 120): one run stays below it.
MAX_QUERIES_PER_RUN = 100
PAYMENT_TYPES = {"pay": "payment", "refund": "refund", "topup": "top-up", "payout": "payout"}
ID_FIELDS = ("payment_id", "refund_id", "topup_id", "payout_id")

# (path, params) -> the center's answer, the query signed and sent.
Fetch = Callable[[str, dict[str, int]], dict]


class LogProblem(Exception):
    """The first thing that does not hold, as one line."""


class Unanswered(LogProblem):
    """The center did not answer a log query (unreachable, busy, refused): nothing learnt."""


class _OutOfQueries(Exception):
    pass


# --- receipts as the wallet records them -------------------------------------------------


def receipt_form(document: object) -> dict | Envelope:
    """An answer's receipt as check_receipt takes it: the log receipt dict, or an older signed
    envelope (a resend of a request answered before the change gets its first receipt again)."""
    if isinstance(document, dict) and document.get("format") == LOG_RECEIPT_FORMAT:
        return document
    return Envelope.from_json(document)


def receipt_json(receipt: dict | Envelope) -> dict:
    return receipt.to_json() if isinstance(receipt, Envelope) else receipt


def receipt_log_record(checked: dict, receipt: dict | Envelope, request: Envelope) -> dict | None:
    """What `wallet audit check` needs of a verified receipt, or None for an old-form one."""
    log = checked.get("log")
    if log is None:
        return None
    index, leaf = receipt_leaf(receipt, request)
    if index != log["index"]:
        raise WireError("log_proof_invalid", "the receipt's leaf index and its entry disagree")
    return {
        "index": index,
        "leaf_hash": leaf.hex(),
        "tree_size": log["tree_size"],
        "root_hash": log["root_hash"],
    }


# --- signed log queries ------------------------------------------------------------------


def canonical_query(params: dict[str, int]) -> str:
    """The query string a LOG_QUERY names: the arguments in the order the endpoint lists them."""
    return "&".join(f"{name}={value}" for name, value in params.items())


def sign_log_query(
    doc: dict, token: Token, pin: str, path: str, params: dict[str, int], *, now_s: int
) -> Envelope:
    """A LOG_QUERY authorizing exactly this GET. It uses no counter at the center: it carries the
    last one this wallet used (at least 1) and leaves the wallet's counter where it is."""
    key = KeyRecord.from_json(doc["key"])
    payload = build_payload(
        LOG_QUERY,
        aud=doc["center"]["center_id"],
        kid=doc["kid"],
        msg_id=new_message_id(),
        ctr=max(1, doc["counter"]),
        body={"path": path, "query": canonical_query(params)},
        now_s=now_s,
        lifetime_s=QUERY_LIFETIME_S,
    )
    return seal(payload, alg=key.algorithm, kid=doc["kid"], sign=lambda data: token.sign(key, data, pin))


def query_header_value(envelope: Envelope) -> str:
    return b64url_encode(json.dumps(envelope.to_json(), separators=(",", ":")).encode())


def signed_fetch(
    doc: dict, token: Token, pin: str, client: CenterClient, clock_s: Callable[[], int]
) -> Fetch:
    def fetch(path: str, params: dict[str, int]) -> dict:
        envelope = sign_log_query(doc, token, pin, path, params, now_s=clock_s())
        return client.get_signed(path, params, (QUERY_HEADER, query_header_value(envelope)))

    return fetch


# --- the check ---------------------------------------------------------------------------


@dataclass
class AuditReport:
    ok: bool
    tree_size: int | None
    root_hash: str | None
    kept_tree_size: int | None
    receipts_checked: int
    receipts_total: int
    problem: str | None
    old_form: int = 0  # receipts from before the log was a tree: no proof to check
    remaining: int = 0  # left for the next run (query limit)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "kept_tree_size": self.kept_tree_size,
            "receipts_checked": self.receipts_checked,
            "receipts_total": self.receipts_total,
            "problem": self.problem,
        }

    def summary(self) -> str:
        if not self.ok:
            return f"PROBLEM: {self.problem}"
        lines = [
            f"the center's log holds every receipt checked: tree size {self.tree_size}, "
            f"root {self.root_hash}",
            f"receipts checked: {self.receipts_checked} of {self.receipts_total}",
        ]
        if self.remaining:
            lines.append(
                f"{self.remaining} receipt(s) not checked yet (a run makes a limited number of proofs): "
                "run it again"
            )
        if self.old_form:
            lines.append(
                f"{self.old_form} receipt(s) from before the log was a tree carry no proof: not checkable"
            )
        return "\n".join(lines)


class LogAudit:
    """One `wallet audit check` over an opened vault document; the caller saves the vault."""

    def __init__(
        self,
        doc: dict,
        fetch: Fetch,
        *,
        center_key: tuple[bytes, str],
        max_queries: int = MAX_QUERIES_PER_RUN,
    ):
        assert 3 <= max_queries <= 10_000, "a run needs the head, one consistency and one inclusion proof"
        self.doc, self._fetch = doc, fetch
        self._center_spki, self._center_alg = center_key  # pinned: (SPKI DER, algorithm)
        self._queries_left = max_queries
        self._proven: dict[int, bytes] = {}  # size -> root of heads proved consistent with the newest

    def run(self) -> AuditReport:
        kept = self.doc.get("log_head")
        # Receipts, and a store's notices that came with their payment's proof (paywire.notice_proof),
        # from where the last run stopped.
        tails = {kind: AuditTail.read(self.doc, kind) for kind in LOG_KINDS}
        waiting = [record for tail in tails.values() for record in tail.proved]
        report = AuditReport(
            ok=False,
            tree_size=None,
            root_hash=None,
            kept_tree_size=kept["tree_size"] if kept else None,
            receipts_checked=sum(tail.done["proved"] for tail in tails.values()),
            receipts_total=sum(tail.done["proved"] + len(tail.proved) for tail in tails.values()),
            problem=None,
            old_form=sum(tail.done["old_form"] + tail.old_form for tail in tails.values()),
        )
        try:
            latest = self._latest()
            report.tree_size, report.root_hash = latest.tree_size, latest.root_hash.hex()
            if kept:
                self._consistent(
                    kept["tree_size"], bytes.fromhex(kept["root_hash"]), latest, "the head this wallet kept"
                )
            checked = self._check_receipts(waiting, latest)
        except LogProblem as problem:
            report.problem = str(problem)
            if not isinstance(problem, Unanswered):  # kept: evidence of what the center showed
                add_history(self.doc, "log_audit", "audit-check", "alarm", {"problem": report.problem})
            return report
        done = {id(record) for record in checked}
        self.doc["log_checked"] = {kind: tail.advance(done) for kind, tail in tails.items()}
        report.receipts_checked += len(checked)
        report.remaining = len(waiting) - len(checked)
        report.ok = True
        self.doc["log_head"] = {
            "tree_size": latest.tree_size,
            "root_hash": latest.root_hash.hex(),
            "head_sha256": latest.head_sha256,
            "timestamp_ms": latest.timestamp_ms,
            "tree_head": latest.document,
            "checked_at_ms": now_ms(),
        }
        report.kept_tree_size = latest.tree_size
        return report

    def _check_receipts(self, waiting: list[dict], latest: TreeHead) -> list[dict]:
        """Each receipt's leaf in the newest tree, its head consistent with it; oldest first, until
        the queries run out. Returns the receipts checked."""
        checked = []
        for record in waiting:
            try:
                self._included(record, latest)
                log = record["log"]
                self._consistent(
                    log["tree_size"],
                    bytes.fromhex(log["root_hash"]),
                    latest,
                    f"the head of the {_describe(record)}",
                )
            except _OutOfQueries:
                break
            checked.append(record)
        return checked

    def _latest(self) -> TreeHead:
        answer = self._ask(STH_PATH, {})
        try:
            head = check_tree_head(
                answer.get("tree_head"),
                center_spki=self._center_spki,
                center_alg=self._center_alg,
                center_id=self.doc["center"]["center_id"],
            )
        except (WireError, TypeError, ValueError, KeyError) as error:
            raise LogProblem(
                f"the center's newest tree head does not verify against its pinned key: {_reason(error)}"
            ) from None
        self._proven[head.tree_size] = head.root_hash
        return head

    def _consistent(self, old_size: int, old_root: bytes, latest: TreeHead, what: str) -> None:
        if old_size > latest.tree_size:
            raise LogProblem(
                f"the center's newest tree head (size {latest.tree_size}) is older than {what} "
                f"(size {old_size}): the center rolled its history back"
            )
        known = self._proven.get(old_size)
        if known is not None:
            if known != old_root:
                raise LogProblem(
                    f"{what} (size {old_size}) and a tree head the center shows now have different roots "
                    "at the same size: the center forked its history"
                )
            return
        if old_size == 0:  # the empty tree is a prefix of every tree; its root is fixed
            if old_root != merkle.EMPTY_ROOT:
                raise LogProblem(f"{what} (size 0) has a root other than the empty tree's")
            return
        params = {"from": old_size, "to": latest.tree_size}
        answer = self._ask(CONSISTENCY_PATH, params)
        try:
            if answer.get("from") != old_size or answer.get("to") != latest.tree_size:
                raise WireError("log_proof_invalid", "the answer is for other sizes")
            proof = proof_hashes(answer.get("proof"))
            merkle.verify_consistency(old_size, latest.tree_size, proof, old_root, latest.root_hash)
        except WireError:
            raise LogProblem(
                f"the center's tree head at size {latest.tree_size} is not consistent with {what} at size "
                f"{old_size}: the center rewrote or forked its history"
            ) from None
        self._proven[old_size] = old_root

    def _included(self, record: dict, latest: TreeHead) -> None:
        index, leaf = record["log"]["index"], bytes.fromhex(record["log"]["leaf_hash"])
        where = f"{_describe(record)} (index {index})"
        if index >= latest.tree_size:
            raise LogProblem(
                f"the {where} is beyond the center's newest tree head (size {latest.tree_size}): "
                "the center rolled its history back"
            )
        answer = self._ask(INCLUSION_PATH, {"index": index, "size": latest.tree_size})
        try:
            if answer.get("index") != index or answer.get("size") != latest.tree_size:
                raise WireError("log_proof_invalid", "the answer is for another entry or size")
            merkle.verify_inclusion(
                leaf, index, latest.tree_size, proof_hashes(answer.get("proof")), latest.root_hash
            )
        except WireError:
            raise LogProblem(
                f"{where} is not in the center's log at size {latest.tree_size}: "
                "the center rewrote its history"
            ) from None

    def _ask(self, path: str, params: dict[str, int]) -> dict:
        if self._queries_left <= 0:
            raise _OutOfQueries
        self._queries_left -= 1
        try:
            return self._fetch(path, params)
        except (CenterUnreachable, CenterRefused) as error:
            raise Unanswered(f"the center did not answer {path}: {error}") from None


def _describe(record: dict) -> str:
    """'receipt for payment P-...' style names: the id the answer gave, else the message id."""
    if "notice" in record:
        return f"notice of payment {record['notice']['payment_id']}"
    receipt = record.get("receipt") or {}
    action = receipt.get("entry", {}).get("action", {}) if isinstance(receipt, dict) else {}
    kind = PAYMENT_TYPES.get(record["type"], f"{record['type']} message")
    ident = next((action[name] for name in ID_FIELDS if isinstance(action.get(name), str)), record["msg_id"])
    return f"receipt for {kind} {ident}"


def _reason(error: Exception) -> str:
    return error.message if isinstance(error, WireError) else error.__class__.__name__
