"""The learning-rate schedule: linear warmup, then cosine decay to 0 (half a cycle).

The same LambdaLR as transformers' get_cosine_schedule_with_warmup (same multipliers, same state dict, so older
checkpoints resume unchanged), without importing transformers.optimization: that module imports
transformers.trainer_utils and with it peft, about 1 s and 10-15 MB of a training process that needs neither."""
from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _cosine_with_warmup(step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def cosine_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                       num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    lr_lambda = partial(_cosine_with_warmup, num_warmup_steps=num_warmup_steps,
                        num_training_steps=num_training_steps, num_cycles=num_cycles)
    return LambdaLR(optimizer, lr_lambda, last_epoch)
