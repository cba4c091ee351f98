"""Signed requests: verify -> idempotency -> counter -> effect -> audit -> receipt.

service (Center: verification) -> accept (the single path's transaction) and batch/group_commit
(payments together) -> handlers (one effect per message type: operator_actions, console_login,
rotation among them) -> rules (counter window, earlier answers, answer rows, refusals, audit
entry and receipt, written once) -> types (Outcome, Signer, Verified, CenterContext).
"""
