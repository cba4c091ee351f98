"""Where `wallet audit check` stands: per kind of record (receipts, a store's notices), the index
before which every record has been checked against the center's log, kept in the vault's core as
`log_checked` ({"next", "proved", "old_form"} per kind). Records are never changed once written
(token_wallet.vault_records), so the progress cannot live in them; checks go oldest first, so the
checked records are always a prefix and one index says which they are."""

from __future__ import annotations

LOG_KINDS = ("receipts", "notices")


class AuditTail:
    """The records of one kind from the audit cursor on: what this run may check."""

    def __init__(self, kind: str, done: dict, records: list[dict]) -> None:
        self.kind, self.done, self.records = kind, done, records
        self.proved = [record for record in records if record.get("log") is not None]
        self.old_form = len(records) - len(self.proved)

    @classmethod
    def read(cls, doc: dict, kind: str) -> AuditTail:
        done = (doc.get("log_checked") or {}).get(kind) or cursor_from_flags(doc.get(kind, []))
        return cls(kind, dict(done), list(doc.get(kind, [])[done["next"] :]))

    def advance(self, checked: set[int]) -> dict:
        """The cursor after this run: past every record checked now and every old-form one in
        between; it stops at the first record still to check, so the checked ones stay a prefix."""
        done = dict(self.done)
        for record in self.records:
            if record.get("log") is None:
                done["old_form"] += 1
            elif id(record) in checked:
                done["proved"] += 1
            else:
                break
            done["next"] += 1
        return done


def cursor_from_flags(records) -> dict:
    """A vault from before the cursor marked each checked record itself ("checked": true, always a
    prefix since checks go in order): where its cursor stands. Read once; the next run saves the cursor."""
    done = {"next": 0, "proved": 0, "old_form": 0}
    for record in records:
        log = record.get("log")
        if log is None:
            done["old_form"] += 1
        elif log.get("checked") is True:
            done["proved"] += 1
        else:
            break
        done["next"] += 1
    return done
