"""Clients of a running cluster: Ray Jobs submission (``rayagg submit`` / ``jobs``) and
``rayagg scale``'s request to a live run. Importing this package imports no Ray."""
