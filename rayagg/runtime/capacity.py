"""Asking Ray's autoscaler for machines before the host actors that need them exist.

``ray.autoscaler.sdk.request_resources`` sets the cluster's standing request (each call
replaces the last; what to ask for and when: rayagg/core/capacity.py). On a cluster with
no autoscaler it is a write nobody reads, and where it cannot be made (Ray not
connected, the GCS unreachable) it is only a lost hint: the hosts still ask for their
machines when they start. So a failure is logged once per process, never raised.
"""
from __future__ import annotations

import logging

from ray import exceptions as ray_errors

from rayagg.core.capacity import Demand

logger = logging.getLogger(__name__)
_warned = False


def request(demand: Demand) -> bool:
    """Makes ``demand`` the cluster's standing request (an empty one withdraws it);
    returns whether the call went through."""
    global _warned
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[dict(b) for b in demand.bundles],
                          bundle_label_selectors=[dict(s) for s in demand.labels] or None)
        return True
    except (RuntimeError, ConnectionError, TimeoutError, ray_errors.RayError) as exc:
        if not _warned:
            _warned = True
            logger.warning("rayagg: could not ask the autoscaler for %s ahead of time (%s: %s); "
                           "hosts will still ask for their machines when they start",
                           demand.describe(), type(exc).__name__, exc)
        return False
