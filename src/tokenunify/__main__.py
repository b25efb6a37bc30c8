"""`python -m tokenunify` (and `torchrun ... -m tokenunify`): the same entry point as the `tokenunify` command."""

from tokenunify.cli import main

main()
