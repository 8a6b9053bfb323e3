"""``python -m rayagg``: the same command line as ``rayagg``, with the running interpreter
rather than whatever ``rayagg`` is on the PATH (e.g. a Ray Jobs entrypoint)."""
from rayagg.cli import main

main()
