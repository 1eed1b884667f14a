"""`python -m focalserve_server` is the `focalserve` command."""

from focalserve_server.cli import main

main()
