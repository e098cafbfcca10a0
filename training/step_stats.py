"""Step metrics for the trainers' loop: summed on the device (no `.item()` per sub-batch: on a GPU each one would
stall the queue) and read back once per step as one metrics.jsonl line."""
from __future__ import annotations

import math

import torch

from training.checkpointing import peak_memory_mb
from training.plan import Step


class StepStats:
    """Step metrics summed on the device (no `.item()` per sub-batch: on a GPU each one would stall the queue),
    read back once per step. Under DDP each process sums its own shard and `reduce` (accelerate's) adds the
    processes' sums in that one read-back, so the logged step is the whole batch's."""

    def __init__(self, examples: int, device, reduce=None):
        self.examples, self.device, self.reduce = examples, device, reduce
        self.sum: dict[str, torch.Tensor] = {}
        self.once: dict[str, torch.Tensor] = {}   # values already equal on every process (grad norm)
        self.tokens = self.n_reward = 0

    def add_value(self, key: str, value: torch.Tensor) -> None:
        v = torch.as_tensor(value).detach().to(device=self.device, dtype=torch.float64)  # exact for fp64 runs
        self.sum[key] = self.sum[key] + v if key in self.sum else v

    def add_once(self, key: str, value: torch.Tensor) -> None:
        self.once[key] = torch.as_tensor(value).detach().to(device=self.device, dtype=torch.float64)

    def add(self, loss, lo, ntok: int, pair_sums, n_examples: int) -> None:
        self.add_value("loss", loss / self.examples)
        self.tokens += ntok
        if pair_sums is not None:  # mean policy log-probs, as TRL logs them (logps/chosen)
            self.add_value("logps_chosen", pair_sums[0::2].sum() / self.examples)
            self.add_value("logps_rejected", pair_sums[1::2].sum() / self.examples)
        if lo.chosen_reward is not None and lo.rejected_reward is not None:
            cr, rr = lo.chosen_reward.detach().float(), lo.rejected_reward.detach().float()
            self.add_value("acc", (cr > rr).float().sum())
            self.add_value("rc", cr.sum())
            self.add_value("rr", rr.sum())
            self.n_reward += len(cr)
        for k, v in lo.metrics.items():
            self.add_value(k, v.detach().float().mean() * n_examples / self.examples)

    def record(self, step: int, plan_step: Step, lr: float, dt: float) -> dict:
        """The step's metrics.jsonl line (the step's only device->host sync)."""
        m, n = self.values(), self.n_reward
        rec = {"step": step, "stage": plan_step.stage, "loss": m.pop("loss"),
               "reward_accuracy": m.pop("acc") / n if n else None,
               "chosen_reward": m["rc"] / n if n else None, "rejected_reward": m["rr"] / n if n else None,
               "margin": (m.pop("rc") - m.pop("rr")) / n if n else None, "grad_norm": m.pop("grad_norm", None),
               "lr": lr, "examples": plan_step.examples, "tokens": self.tokens, "tokens_per_s": self.tokens / dt,
               "examples_per_s": plan_step.examples / dt, "step_time_s": dt, "peak_memory_mb": peak_memory_mb(),
               **{(k if k.startswith("logps") else f"loss/{k}"): v for k, v in m.items()}}
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"loss is {rec['loss']} at step {step}")
        return rec

    def values(self) -> dict[str, float]:
        keys = sorted(self.sum)   # the same order on every process
        counts = torch.tensor([float(self.tokens), float(self.n_reward)], dtype=torch.float64, device=self.device)
        vec = torch.cat([torch.stack([self.sum[k].reshape(()) for k in keys]) if keys else counts[:0], counts])
        if self.reduce is not None:
            vec = self.reduce(vec, "sum")
        vals = vec.tolist()
        self.tokens, self.n_reward = int(vals[-2]), int(vals[-1])
        out = dict(zip(keys, vals[:-2], strict=True))
        out.update({k: float(v) for k, v in self.once.items()})
        for k in [k[:-4] for k in keys if k.endswith("@sum")]:  # means over the examples that have the metric
            s, n = out.pop(k + "@sum"), out.pop(k + "@n")
            out[k] = s / n if n else None
        return out
