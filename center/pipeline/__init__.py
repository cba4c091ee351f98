"""Signed requests: verify -> idempotency -> counter -> effect -> audit -> receipt (single, group commit, batch, operator actions)."""
