"""``python -m rayagg``: the same command line as ``rayagg`` (for Ray Jobs entrypoints and
benchmarks that need the running interpreter, not whatever ``rayagg`` is on the PATH)."""
from rayagg.cli import main

main()
