"""Leases: grant/revoke/keepalive/expiry/checkpoint (see :mod:`kvstore.lease.lessor`)."""

from kvstore.lease.lessor import MAX_LEASE_TTL, NO_LEASE, Lease, Lessor

__all__ = ["MAX_LEASE_TTL", "NO_LEASE", "Lease", "Lessor"]
