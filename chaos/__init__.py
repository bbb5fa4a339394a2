"""Chaos harness: fault injection, recorded workloads and history checkers.

Run ``python -m chaos --seed N --rounds R --members 3`` against a real
etcd cluster, or ``--target kvstore`` against our own server (see
:mod:`chaos.runner`). The cluster under test sits behind
:class:`chaos.cluster.ClusterUnderTest`.

Modules: ``history`` (recorded operations), ``linearizability`` (per-key
Wing-Gong/Lowe search), ``checkers`` (watch, lease, lock, durability),
``workloads``, ``faults`` (seeded schedules, injection, leader monitor),
``runner`` (a campaign), ``timeline`` (the PNG picture), ``report`` (the HTML
report), ``powerfs`` (the power-loss FUSE filesystem) and ``disk`` (the
harness's handle on it).
"""

from chaos.campaign import CampaignConfig, CampaignResult
from chaos.cluster import ClusterUnderTest, ProcessClusterUnderTest
from chaos.runner import run_campaign

__all__ = [
    "CampaignConfig",
    "CampaignResult",
    "ClusterUnderTest",
    "ProcessClusterUnderTest",
    "run_campaign",
]
