"""How many CPUs this process may really use, for onnxruntime's thread count.

onnxruntime's default (intra_op_num_threads=0) is one thread per physical core of the host. In a container limited
to 2 CPUs on a 64-core node that is 64 threads sharing 2 CPUs' worth of time: the CFS quota throttles them and every
run waits for its slowest thread. The container's allotment is its CPU affinity and its cgroup CPU quota.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs granted by the cgroup quota (v2 cpu.max, else v1 cfs_quota_us / cfs_period_us); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_allotment(root: Path = CGROUP) -> int | None:
    """CPUs this process may use when fewer than the host has (affinity or quota); None: the whole host."""
    limits = []
    affinity = len(os.sched_getaffinity(0))
    if affinity < (os.cpu_count() or affinity):
        limits.append(affinity)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        limits.append(max(1, math.ceil(quota)))
    return min(limits) if limits else None
