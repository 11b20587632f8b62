"""PyTorch's own distributed engine, as launched by torchrun (or the Kubeflow PyTorchJob, which sets the same env).

One process per GPU (or CPU worker): DistributedDataParallel for gradients, gloo on CPU, NCCL on GPU. Nothing here
launches processes or invents a protocol; it reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP registers the parameters that require grad when it is built: re-wrap whenever that set changes."""
    if not d.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_all(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on one: all ranks stop at the same step, or collectives would hang."""
    return sum_all([float(flag)], d, device)[0] > 0 if d.enabled else flag


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_digests(model: torch.nn.Module, d: Dist) -> list[str]:
    digest = weights_digest(model)
    if not d.enabled:
        return [digest]
    out: list = [None] * d.world
    dist.all_gather_object(out, digest)
    return out


def finish(d: Dist) -> None:
    """Every rank tears the group down together: rank 0 evaluates and exports alone after training. Seen once (a
    fresh-clone CI run, not reproduced in 4 local runs): rank 1, having destroyed its gloo group while rank 0 still
    held the connection, aborted at exit ("terminate called without an active exception", SIGABRT)."""
    if d.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer already died (a killed rank): nothing left to wait for
            pass
        dist.destroy_process_group()
