"""Training in several processes launched by ``torchrun`` (DDP, or FSDP for a full fine-tune).

``torchrun --nproc-per-node N -m openvla_ros.cli.finetune ...`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`from_env` reads them and joins the process group (nccl on CUDA, one
GPU per process at ``cuda:LOCAL_RANK``; gloo on CPU). Without them (or with ``WORLD_SIZE=1``)
training is the single-process path, unchanged.

The global batch does not depend on the number of processes: every rank draws the same
``batch_size`` samples from the same seeded generator (the very draw one process would make),
and takes its contiguous share of them (``numpy.array_split``: sizes differ by at most one). Each
rank's mean loss is weighted by its share of the samples (every sample has the same number of
labelled positions) and multiplied by the world size, because DDP and FSDP average the gradients
over ranks; the gradient is therefore that of the mean over the global micro-batch, as in one
process. So ``--batch-size`` stays "samples per micro-batch", now summed over the ranks, and N
processes with the same flags follow the same run as one (to float32 summation-order rounding),
``batch_size / N`` samples each. Only rank 0 writes the trainer state, history and export.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

STRATEGIES = ('ddp', 'fsdp')


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = 'cpu'
    owns_group: bool = False     # this process initialised the group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` globally drawn samples."""
        bounds = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(n), self.size)])
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64 on the host for gloo, on the GPU for nccl)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (e.g. rank 0's clock says stop)."""
        return bool(self.sum([float(flag)])[0] > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> str:
        return self.device if self.device.startswith('cuda') else 'cpu'


def from_env() -> World:
    """The process group from torchrun's environment, initialised here if it is not yet."""
    size = int(os.environ.get('WORLD_SIZE', '1'))
    cuda = torch.cuda.is_available()
    if size <= 1:
        return World(device='cuda' if cuda else 'cpu')
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    device = f'cuda:{local_rank}' if cuda else 'cpu'
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group('nccl' if cuda else 'gloo', rank=rank,
                                             world_size=size)
        owns = True
    return World(rank=rank, size=size, local_rank=local_rank, device=device, owns_group=owns)


class LossModule(torch.nn.Module):
    """The training loss as a module forward, so that DDP's and FSDP's forward hooks (gradient
    synchronisation, parameter gathering) run around it."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, pixel_values, input_ids, labels):
        return self._loss_fn(self.model, pixel_values, input_ids, labels)


def wrap(model, loss_fn, world: World, strategy: str):
    """``model`` (the engine's OpenVLAModel, or its peft wrapper) behind DDP or FSDP (FSDP2
    ``fully_shard``: one unit per Llama decoder layer and per ViT block, the rest in the root)."""
    module = LossModule(model, loss_fn)
    if strategy == 'ddp':
        from torch.nn.parallel import DistributedDataParallel

        # The featurizers read the second-to-last ViT block: the last one gets no gradient.
        ids = [torch.device(world.device).index] if world.device.startswith('cuda') else None
        # Every rank loaded the same checkpoint: the frozen weights (a 4-bit qlora base among
        # them) and the buffers need no broadcast from rank 0.
        same = [n for n, p in module.named_parameters() if not p.requires_grad]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, same + [n for n, _ in module.named_buffers()])
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from openvla_ros.engine.modeling import LlamaDecoderLayer

    mesh = init_device_mesh('cuda' if world.device.startswith('cuda') else 'cpu', (world.size,))
    for sub in model.modules():
        if isinstance(sub, LlamaDecoderLayer) or type(sub).__name__ == 'Block':
            fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def full_state(model, optimizer, strategy: str, world: World) -> tuple[dict, dict]:
    """(model state, optimizer state) in the single-process layout, on the CPU: for FSDP gathered
    from the shards (a collective: every rank calls it); for DDP each rank's replica is whole."""
    if strategy != 'fsdp' or not world.distributed:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=opts),
            get_optimizer_state_dict(model, optimizer, options=opts))


def load_full_state(model, optimizer, model_state: dict, optimizer_state: dict, strategy: str,
                    world: World) -> None:
    if strategy != 'fsdp' or not world.distributed:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    # strict=False: a parameter that never received a gradient (the last ViT block) has no AdamW
    # state yet, in one process as here
    set_optimizer_state_dict(model, optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
