"""`python -m server` is the `focalserve` command."""

from server.cli import main

main()
