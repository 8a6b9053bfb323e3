"""The run directory's formats and guarantees: the manifest (state.json), checkpoints,
the bridge-sample store, metrics, events, the accuracy plot, the live record, and the
checks that let a run resume exactly (docs/failures.md)."""
