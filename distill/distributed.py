"""torch.distributed set-up for runs launched by torchrun (gloo on CPU, nccl on GPU).

`torchrun --nproc_per_node=N -m distill run RECIPE` starts N copies of the command; each
finds its rank in the environment torchrun sets. Training stages run on every rank (the
training loop shards the data and synchronises gradients); everything that writes the run
directory happens on rank 0 only.
"""

from __future__ import annotations

import os


def launched_distributed() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group() -> None:
    """Join the process group torchrun describes; a no-op for a single process."""
    import torch
    import torch.distributed as dist

    if not launched_distributed() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _initialised() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op for a single process."""
    import torch.distributed as dist

    if _initialised():
        dist.barrier()
