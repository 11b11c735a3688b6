"""`python -m sagaflow ...`: the same as the `sagaflow` command."""

from sagaflow.ops.cli import main

main()
