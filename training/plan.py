"""The step plan: every optimizer step's micro-batches of group indices, fixed up front from the seed.

Because the plan is a pure function of (data, recipe), the data position of a checkpoint is just the step
number: a resumed run rebuilds the same plan and continues at that step. With a curriculum, steps never mix
stages and stages run in ascending `stage` order (Curry-DPO: easy first)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    stage: int | None
    micro: tuple[tuple[int, ...], ...]   # group indices per micro-batch

    @property
    def examples(self) -> int:
        return sum(len(m) for m in self.micro)


def _steps(indices: list[int], *, batch_size: int, grad_accum: int, stage: int | None) -> list[Step]:
    micro = [tuple(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    return [Step(stage, tuple(micro[i:i + grad_accum])) for i in range(0, len(micro), grad_accum)]


def make_plan(stage: torch.Tensor, *, batch_size: int, grad_accum: int, epochs: int, seed: int,
              curriculum: str, max_steps: int | None) -> list[Step]:
    gen = torch.Generator().manual_seed(seed)
    plan: list[Step] = []
    if curriculum == "off":
        # like HF Trainer: max_steps, when set, overrides epochs (the data is reshuffled and repeated)
        e = 0
        while e < epochs if not max_steps else len(plan) < max_steps:
            e += 1
            perm = torch.randperm(len(stage), generator=gen).tolist()
            plan += _steps(perm, batch_size=batch_size, grad_accum=grad_accum, stage=None)
    else:
        stages = sorted(set(stage.tolist()))
        # with a curriculum, max_steps is shared evenly by the stages (each stage gets its first steps)
        per_stage = -(-max_steps // len(stages)) if max_steps else None
        for s in stages:
            members = (stage == s).nonzero().flatten()
            steps: list[Step] = []
            for _ in range(epochs):
                perm = members[torch.randperm(len(members), generator=gen)].tolist()
                steps += _steps(perm, batch_size=batch_size, grad_accum=grad_accum, stage=s)
            plan += steps[:per_stage] if per_stage else steps
    return plan[:max_steps] if max_steps else plan


def stage_starts(plan: list[Step]) -> dict[int, int]:
    """step index -> stage, for the first step of every stage after the first (where the reference refreshes)."""
    out = {}
    for i in range(1, len(plan)):
        if plan[i].stage is not None and plan[i].stage != plan[i - 1].stage:
            out[i] = plan[i].stage
    return out
