"""The `wallet` command: one module per command group."""
