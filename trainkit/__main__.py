"""`python -m trainkit` and `torchrun --nproc_per_node=N -m trainkit [overrides]`."""

from trainkit.cli import entry

entry()
