"""The training loop, readable in one sitting.

One optimizer step = `grad_accum` micro-batches from the precomputed plan. A micro-batch runs the policy over
its prompts (shared-prompt packing, chunked LM head), builds the loss's batch from the per-response log-probs
and the dataset's reference columns, and backpropagates the weighted mean loss. accelerate places the model,
runs DDP/FSDP and bf16 autocast on a GPU. A checkpoint (model, optimizer, scheduler, RNG, reference store,
BCO state + the step = data position) is written atomically, so a killed run resumes bit-exactly.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import get_cosine_schedule_with_warmup

from prefdata.errors import PrefdataError
from training.batches import RefStore, make_batch
from training.budget import resolve_token_budget
from training.checkpointing import check_resumable, load_latest_checkpoint, write_checkpoint
from training.checkpointing import checkpoint_dirs as _checkpoints  # shared with the diffusion/VLM trainers
from training.checkpointing import peak_memory_mb as _peak_memory_mb
from training.checkpointing import precision as _precision
from training.checkpointing import truncate_metrics as _truncate_metrics  # noqa: F401  (diffusion imports it here)
from training.data import TrainData
from training.forward import group_logps
from training.logps import SequenceLogps, attn_implementation
from training.losses import LossSpec, RunningMean
from training.packing import resolve_layout, split_by_tokens
from training.plan import Step, stage_starts
from training.recipe import TrainRecipe
from training.unpaired import UnpairedMicro


@dataclass
class RunSetup:
    recipe: TrainRecipe
    spec: LossSpec
    params: object
    lm: torch.nn.Module
    tokenizer: object
    data: TrainData
    ref: RefStore
    plan: list[Step]
    out_dir: Path
    dataset_ref: str
    resume: bool = False
    log_event: Callable[[str, dict], None] | None = None
    info: dict = field(default_factory=dict)       # reference status, drops: copied into every checkpoint
    online_ref: object = None                      # TDPO: frozen reference model or logps.ADAPTERS_OFF


class Trainer:
    def __init__(self, s: RunSetup):
        self.s, t = s, s.recipe.train
        self.acc = Accelerator(mixed_precision=_precision(t.mixed_precision), cpu=not torch.cuda.is_available())
        set_seed(t.seed)
        if t.grad_checkpointing:
            s.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.acc.mixed_precision)
        model = SequenceLogps(s.lm, chunk=t.logp_chunk, compute_dtype=head_dtype, reference=s.online_ref)
        params = [p for p in model.parameters() if p.requires_grad]
        # fused AdamW: one kernel per step instead of a dozen per parameter (CPU: ~8x faster, no temporaries)
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                fused=all(p.is_floating_point() for p in params))
        warmup = int(round(t.warmup_ratio * len(s.plan)))
        self.sched = get_cosine_schedule_with_warmup(opt, warmup, max(1, len(s.plan)))
        self.model, self.opt = self.acc.prepare(model, opt)
        self.acc.register_for_checkpointing(self.sched)
        bco = getattr(s.params, "delta", None) == "running_mean"
        self.bco = RunningMean(s.params.delta_window) if bco else None
        # several forwards per backward are fine on one process; DDP wants exactly one per micro-batch
        self.token_budget = resolve_token_budget(t.token_budget, s.lm, self.acc.device,
                                                 mixed_precision=head_dtype is not None,
                                                 grad_checkpointing=t.grad_checkpointing) \
            if self.acc.num_processes == 1 else 1 << 62
        self.metrics_path = s.out_dir / "metrics.jsonl"
        self.layout = resolve_layout(t.layout, device=self.acc.device, kind=s.data.kind,
                                     attn_impl=attn_implementation(s.lm))
        s.info["layout"] = self.layout
        self.micro = UnpairedMicro(self) if s.data.kind == "unpaired" else self  # KTO: z0 first (unpaired.py)

    # -- one micro-batch ------------------------------------------------------------------------------
    def micro_loss(self, idx: tuple[int, ...]):
        s = self.s
        groups = [s.data.groups[i] for i in idx]
        out = group_logps(self.model, groups, pad_id=s.tokenizer.pad_token_id, device=self.acc.device,
                          token_budget=self.token_budget, with_tokens="token_logps" in s.spec.needs,
                          layout=self.layout, with_kl="seq_kl" in s.spec.needs)
        delta = self.bco.value if self.bco is not None else None
        batch = make_batch(s.spec, out, s.data, torch.tensor(idx), s.ref, self.acc.device, delta)
        lo = s.spec.fn(batch, s.params)
        if self.bco is not None:
            self.bco.update(lo.metrics["bco_reward_mean"])
        return (lo.loss * batch.weight).sum(), lo, sum(g.n_tokens for g in groups), out.sums

    def parts(self, idx: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Sub-batches that are forwarded AND backpropagated one at a time, so only one sub-batch's activations
        live at once. Only for losses that are a sum of per-example terms; a batch-level term (RPO/CPO/SimPO
        NLL over the batch's tokens, BCO's running mean) keeps the micro-batch whole (graphs alive until one
        backward, still forwarded in token-budget sub-batches)."""
        if "nll" in self.s.spec.needs or self.bco is not None:
            return [idx]
        split = split_by_tokens([self.s.data.groups[i] for i in idx], self.token_budget, self.layout)
        return [tuple(idx[i] for i in part) for part in split]

    @torch.no_grad()
    def refresh_reference(self, stage: int) -> None:
        """Curry-DPO: the reference for this stage is the current policy (its log-probs on this stage's rows)."""
        s = self.s
        rows = (s.data.stage == stage).nonzero().flatten().tolist()
        self.model.eval()
        for i in range(0, len(rows), s.recipe.reference.batch_size):
            part = rows[i:i + s.recipe.reference.batch_size]
            out = group_logps(self.model, [s.data.groups[j] for j in part], pad_id=s.tokenizer.pad_token_id,
                              device=self.acc.device, token_budget=self.token_budget, layout=self.layout)
            k = s.ref.seq.shape[1]
            if s.data.kind == "pairs":
                s.ref.seq[part] = out.sums.double().cpu().view(-1, 2)
            else:
                mask = s.data.columns["list_mask"][part]
                vals = torch.zeros(len(part), k, dtype=torch.float64)
                vals[mask] = out.sums.double().cpu()
                s.ref.seq[part] = vals
        self.model.train()

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, step: int, last: dict) -> Path:
        s = self.s
        state = {"dataset": s.dataset_ref, "config_sha256": s.recipe.config_hash(), "recipe": s.recipe.canonical(),
                 "metrics": last, **s.info}
        extra = {"ref": s.ref.state_dict(), "bco": self.bco.state_dict() if self.bco else None}
        final = write_checkpoint(self.acc, s.out_dir, step, state, extra)
        if s.log_event and self.acc.is_main_process:
            s.log_event("checkpoint", {"checkpoint": str(final), "step": step,
                                       "config_sha256": state["config_sha256"], "output_dir": str(s.out_dir)})
        return final

    def load_latest(self) -> int:
        check_resumable(self.s.out_dir, self.s.dataset_ref, self.s.recipe.canonical())
        step, extra = load_latest_checkpoint(self.acc, self.s.out_dir, self.metrics_path)
        if extra is not None:
            self.s.ref.load_state_dict(extra["ref"])
            if self.bco is not None and extra["bco"]:
                self.bco.load_state_dict(extra["bco"])
        return step

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> dict:
        s, t = self.s, self.s.recipe.train
        s.out_dir.mkdir(parents=True, exist_ok=True)
        if not s.resume and _checkpoints(s.out_dir):  # never mix two runs' checkpoints in one folder
            raise PrefdataError(f"{s.out_dir} holds checkpoints of an earlier run: resume it (--resume) or "
                                "choose another output_dir")
        start = self.load_latest() if s.resume else 0
        if not s.resume and self.metrics_path.exists():
            self.metrics_path.unlink()
        refresh = stage_starts(s.plan) if s.recipe.curriculum.mode == "iterative" else {}
        last: dict = {}
        self.model.train()
        bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                       TimeRemainingColumn(), disable=not self.acc.is_main_process)
        t_run = time.perf_counter()
        with bar, self.metrics_path.open("a") as log:
            task = bar.add_task("train", total=len(s.plan), completed=start, info="")
            for step in range(start, len(s.plan)):
                plan = s.plan[step]
                if step in refresh:
                    self.refresh_reference(refresh[step])
                t0 = time.perf_counter()
                stats = _StepStats(plan.examples, self.acc.device)
                parts = [p for idx in plan.micro for p in self.micro.parts(idx)]
                for j, idx in enumerate(parts):
                    ctx = self.acc.no_sync(self.model) if j < len(parts) - 1 else _nullcontext()
                    with ctx:
                        loss, lo, ntok, lo_sums = self.micro.micro_loss(idx)
                        self.acc.backward(loss / plan.examples)
                    stats.add(loss, lo, ntok, lo_sums if s.data.kind == "pairs" else None, len(idx))
                lr = self.sched.get_last_lr()[0]  # the rate this step uses
                if t.max_grad_norm is not None:
                    stats.add_value("grad_norm", self.acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                m = stats.values()  # the step's only device->host sync
                dt = time.perf_counter() - t0
                n = stats.n_reward
                last = {"step": step + 1, "stage": plan.stage, "loss": m.pop("loss"),
                        "reward_accuracy": m.pop("acc") / n if n else None,
                        "chosen_reward": m["rc"] / n if n else None,
                        "rejected_reward": m["rr"] / n if n else None,
                        "margin": (m.pop("rc") - m.pop("rr")) / n if n else None,
                        "grad_norm": m.pop("grad_norm", None), "lr": lr, "examples": plan.examples,
                        "tokens": stats.tokens, "tokens_per_s": stats.tokens / dt,
                        "examples_per_s": plan.examples / dt, "step_time_s": dt,
                        "peak_memory_mb": _peak_memory_mb(), **{(k if k.startswith("logps") else f"loss/{k}"): v
                                                            for k, v in m.items()}}
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"loss is {last['loss']} at step {step + 1}")
                if self.acc.is_main_process and ((step + 1) % t.log_every == 0 or step + 1 == len(s.plan)):
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                acc = last["reward_accuracy"]  # None for unpaired (KTO) data
                bar.update(task, advance=1, info=f"loss {last['loss']:.4f}" + (f" acc {acc:.2f}" if acc is not None else ""))
                if t.save_every and (step + 1) % t.save_every == 0 and step + 1 < len(s.plan):
                    log.flush()
                    self.save(step + 1, last)
        ckpt = self.save(len(s.plan), last) if s.plan else None
        final = s.out_dir / "final"
        if self.acc.is_main_process:
            lm = self.acc.unwrap_model(self.model).lm
            lm.save_pretrained(final)
            s.tokenizer.save_pretrained(final)
        result = {"output_dir": str(s.out_dir), "final_model": str(final), "checkpoint": str(ckpt),
                  "dataset": s.dataset_ref, "config_sha256": s.recipe.config_hash(), "steps": len(s.plan),
                  "resumed_from": start, "seconds": time.perf_counter() - t_run, "last": last, **s.info}
        if s.log_event and self.acc.is_main_process:
            s.log_event("train", {k: result[k] for k in ("output_dir", "final_model", "checkpoint", "config_sha256",
                                                         "steps")} | {"loss": s.recipe.loss, "last": last})
        return result


class _StepStats:
    """Step metrics summed on the device (no `.item()` per sub-batch: on a GPU each one would stall the queue),
    read back once per step."""

    def __init__(self, examples: int, device):
        self.examples, self.device = examples, device
        self.sum: dict[str, torch.Tensor] = {}
        self.tokens = self.n_reward = 0

    def add_value(self, key: str, value: torch.Tensor) -> None:
        v = torch.as_tensor(value).detach().to(device=self.device, dtype=torch.float64)  # exact for fp64 runs
        self.sum[key] = self.sum[key] + v if key in self.sum else v

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

    def values(self) -> dict[str, float]:
        keys = list(self.sum)
        vals = torch.stack([self.sum[k].reshape(()) for k in keys]).tolist() if keys else []
        out = dict(zip(keys, vals, strict=True))
        for k in [k[:-4] for k in keys if k.endswith("@sum")]:  # means over the examples that have the metric
            s, n = out.pop(k + "@sum"), out.pop(k + "@n")
            out[k] = s / n if n else None
        return out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(setup: RunSetup) -> dict:
    return Trainer(setup).run()
