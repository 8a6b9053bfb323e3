"""Pure decisions over the tree: its shape, a round's steps, packing nodes into hosts,
loads and balancing, membership, supervision's state and actions, events. Neither
torch nor Ray (tests/test_imports.py holds it to that): everything here is testable
without a cluster, and both runtimes share it."""
