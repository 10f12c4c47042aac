"""`python -m skdcache ...` (and `torchrun -m skdcache ...`) runs the command line."""

from skdcache.cli.main import main

main()
