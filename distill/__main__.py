"""`python -m distill` runs the command line (also under torchrun)."""

from distill.cli import main

main()
