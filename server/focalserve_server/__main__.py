"""`python -m focalserve_server` is the `focalserve` command."""

from focalserve_server.cli import main

if __name__ == "__main__":  # worker processes start by importing this module under another name
    main()
