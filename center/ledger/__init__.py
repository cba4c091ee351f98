"""Money and evidence: double-entry book, funding, payouts, the audit chain and its export."""
