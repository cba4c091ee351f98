"""The `center` command: one module per command group."""
