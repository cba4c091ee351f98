"""`python -m center`: the same as the `center` command."""

from center.cli.main import main

main()
