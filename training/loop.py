"""The training loop, readable in one sitting.

One optimizer step = `grad_accum` micro-batches from the precomputed plan. A micro-batch runs the policy over
its prompts (shared-prompt packing, chunked LM head), builds the loss's batch from the per-response log-probs
and the dataset's reference columns, and backpropagates the weighted mean loss. accelerate places the model,
runs DDP/FSDP and bf16 autocast on a GPU. A checkpoint (model, optimizer, scheduler, RNG, reference store,
BCO state + the step = data position) is written atomically, so a killed run resumes bit-exactly.

`StepLoop` is that loop without the text specifics; the text `Trainer` and the VLM trainer (vlm_train.py)
both run through it, so steps, metrics, checkpoints, resume and catalog events are one piece of code.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from prefdata.errors import PrefdataError
from training.batches import RefStore, make_batch
from training.budget import resolve_token_budget
from training.checkpointing import (
    RESUMABLE_CHANGES,
    check_resumable,
    checkpoint_dirs,
    load_latest_checkpoint,
    precision,
    write_checkpoint,
)
from training.data import TrainData
from training.evaluation import text_eval_hook
from training.forward import group_logps
from training.logps import SequenceLogps, attn_implementation
from training.losses import LossSpec, RunningMean
from training.packing import resolve_layout, split_by_tokens
from training.plan import Step, stage_starts
from training.recipe import TrainRecipe
from training.refresh import refresh_reference
from training.schedule import cosine_with_warmup
from training.sr_adamw import make_adamw, resolve_sr_impl
from training.step_stats import StepStats
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
    eval_set: object = None                        # evaluation.EvalSet of the recipe's `eval:` section


class StepLoop:
    """The step loop. A subclass sets acc, model, opt, sched, plan, recipe (a parsed recipe: train section,
    loss, config_hash, canonical), out_dir, dataset_ref, info, log_event and bco, and implements `step_loss`
    and `save_final`; the other hooks have defaults."""
    label = "train"
    event_extra: dict = {}
    resumable_changes = RESUMABLE_CHANGES   # recipe keys a resume may change (checkpointing.check_resumable)
    eval_hook = None                        # evaluation.EvalHook: eval/* rows before step 1, every N steps, at the end

    def step_parts(self, idx: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [idx]

    def step_loss(self, idx: tuple[int, ...]):
        """-> (weighted loss sum, LossOut, tokens, [chosen, rejected, ...] summed log-probs or None)."""
        raise NotImplementedError

    def before_run(self) -> None: ...

    def before_step(self, step: int) -> None: ...

    def extra_state(self) -> dict:
        return {"bco": self.bco.state_dict() if self.bco else None}

    def load_extra(self, extra: dict) -> None:
        if self.bco is not None and extra.get("bco"):
            self.bco.load_state_dict(extra["bco"])

    def save_final(self, final: Path) -> None:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, step: int, last: dict) -> Path:
        state = {"dataset": self.dataset_ref, "config_sha256": self.recipe.config_hash(),
                 "recipe": self.recipe.canonical(), "metrics": last, **self.info}
        final = write_checkpoint(self.acc, self.out_dir, step, state, self.extra_state())
        if self.log_event and self.acc.is_main_process:
            self.log_event("checkpoint", {"checkpoint": str(final), "step": step,
                                          "config_sha256": state["config_sha256"], "output_dir": str(self.out_dir)})
        return final

    def load_latest(self) -> int:
        check_resumable(self.out_dir, self.dataset_ref, self.recipe.canonical(), self.resumable_changes)
        step, extra = load_latest_checkpoint(self.acc, self.out_dir, self.metrics_path)
        if extra is not None:
            self.load_extra(extra)
        return step

    def log_eval(self, step: int, log, console) -> None:  # main process only: the others wait at the next sync
        if self.eval_hook is not None and self.eval_hook.due(step, len(self.plan)) and self.acc.is_main_process:
            log.write(json.dumps(self.eval_hook(step, console)) + "\n")
            log.flush()

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        t, plan = self.recipe.train, self.plan
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and checkpoint_dirs(self.out_dir):  # never mix two runs' checkpoints in one folder
            raise PrefdataError(f"{self.out_dir} holds checkpoints of an earlier run: resume it (--resume) or "
                                "choose another output_dir")
        world, rank = self.acc.num_processes, self.acc.process_index
        if world > 1 and min(len(m) for st in plan for m in st.micro) < world:
            raise PrefdataError(f"a micro-batch of the plan has fewer rows than the {world} processes (each needs "
                                "at least one): raise train.batch_size or drop the last partial batch's rows")
        start = self.load_latest() if resume else 0
        main = self.acc.is_main_process   # only the main process touches metrics.jsonl (DDP: one writer)
        if main and start == 0 and self.metrics_path.exists():   # a resume without a checkpoint starts over
            self.metrics_path.unlink()
        self.before_run()
        last: dict = {}
        self.model.train()
        # progress on stderr: stdout stays clean for `prefdata train --json`
        bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True),
                       disable=not self.acc.is_main_process)
        t_run = time.perf_counter()
        with bar, (self.metrics_path if main else Path(os.devnull)).open("a") as log:
            task = bar.add_task("train", total=len(plan), completed=start, info="")
            if start == 0:   # eval of the starting policy: what training is compared with
                self.log_eval(0, log, bar.console)
            for step in range(start, len(plan)):
                self.before_step(step)
                t0 = time.perf_counter()
                stats = StepStats(plan[step].examples, self.acc.device, reduce=self.acc.reduce if world > 1 else None)
                # DDP: each process takes every world-th example of a micro-batch; DDP averages the processes'
                # gradients, so each scales its sum by `world` to give the whole batch's mean
                parts = [p for idx in plan[step].micro for p in self.step_parts(idx[rank::world])]
                for j, idx in enumerate(parts):
                    ctx = self.acc.no_sync(self.model) if j < len(parts) - 1 else nullcontext()
                    with ctx:
                        loss, lo, ntok, pair_sums = self.step_loss(idx)
                        self.acc.backward(loss * world / plan[step].examples)
                    stats.add(loss, lo, ntok, pair_sums, len(idx))
                lr = self.sched.get_last_lr()[0]  # the rate this step uses
                if t.max_grad_norm is not None:
                    stats.add_once("grad_norm", self.acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                last = stats.record(step + 1, plan[step], lr, time.perf_counter() - t0)
                if self.acc.is_main_process and ((step + 1) % t.log_every == 0 or step + 1 == len(plan)):
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                acc = last["reward_accuracy"]  # None for unpaired (KTO) data
                bar.update(task, advance=1, info=f"loss {last['loss']:.4f}" + (f" acc {acc:.2f}" if acc is not None else ""))
                self.log_eval(step + 1, log, bar.console)   # before the step's checkpoint: never lost, never repeated
                if t.save_every and (step + 1) % t.save_every == 0 and step + 1 < len(plan):
                    log.flush()
                    self.save(step + 1, last)
        ckpt = self.save(len(plan), last) if plan else None
        final = self.out_dir / "final"
        if self.acc.is_main_process:
            self.save_final(final)
        result = {"output_dir": str(self.out_dir), "final_model": str(final), "checkpoint": str(ckpt),
                  "dataset": self.dataset_ref, "config_sha256": self.recipe.config_hash(), "steps": len(plan),
                  "resumed_from": start, "seconds": time.perf_counter() - t_run, "last": last, **self.info}
        if self.log_event and self.acc.is_main_process:
            self.log_event("train", {k: result[k] for k in ("output_dir", "final_model", "checkpoint", "config_sha256",
                                                            "steps")} | {"loss": self.recipe.loss, "last": last}
                           | self.event_extra)
        return result


class Trainer(StepLoop):
    def __init__(self, s: RunSetup):
        self.s, t = s, s.recipe.train
        self.recipe, self.plan, self.out_dir, self.dataset_ref = s.recipe, s.plan, s.out_dir, s.dataset_ref
        self.info, self.log_event = s.info, s.log_event
        self.acc = Accelerator(mixed_precision=precision(t.mixed_precision), cpu=not torch.cuda.is_available())
        set_seed(t.seed)
        if t.grad_checkpointing:
            s.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.acc.mixed_precision)
        model = SequenceLogps(s.lm, chunk=t.logp_chunk, compute_dtype=head_dtype, reference=s.online_ref)
        params = [p for p in model.parameters() if p.requires_grad]
        sr = resolve_sr_impl(t.sr_adamw, self.acc.device) if t.master_weights == "bf16" else "bucketed"
        opt = make_adamw(params, lr=t.lr, weight_decay=t.weight_decay, master_weights=t.master_weights, seed=t.seed,
                         sr_impl=sr)
        s.info["optimizer"] = f"sr_adamw {sr}" if t.master_weights == "bf16" else "adamw fused"
        warmup = int(round(t.warmup_ratio * len(s.plan)))
        self.sched = cosine_with_warmup(opt, warmup, max(1, len(s.plan)))
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
        s.info["attention"] = attn_implementation(s.lm)
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
        if self.bco is not None:  # one running mean for all processes
            self.bco.update(self.acc.reduce(lo.metrics["bco_reward_mean"], "mean") if self.acc.num_processes > 1
                            else lo.metrics["bco_reward_mean"])
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

    def refresh_reference(self, stage: int) -> None:
        """Curry-DPO: the reference for this stage is the current policy, every field the loss reads (refresh.py)."""
        refresh_reference(self.model, self.s, stage, device=self.acc.device, token_budget=self.token_budget,
                          layout=self.layout)

    # -- StepLoop hooks -------------------------------------------------------------------------------
    def step_parts(self, idx):
        return self.micro.parts(idx)

    def step_loss(self, idx):
        loss, lo, ntok, sums = self.micro.micro_loss(idx)
        return loss, lo, ntok, sums if self.s.data.kind == "pairs" else None

    def before_run(self) -> None:
        self.refresh = stage_starts(self.plan) if self.recipe.curriculum.mode == "iterative" else {}

    def before_step(self, step: int) -> None:
        if step in self.refresh:
            self.refresh_reference(self.refresh[step])

    def extra_state(self) -> dict:
        return {"ref": self.s.ref.state_dict(), **super().extra_state()}

    def load_extra(self, extra: dict) -> None:
        self.s.ref.load_state_dict(extra["ref"])
        super().load_extra(extra)

    def save_final(self, final: Path) -> None:
        self.acc.unwrap_model(self.model).lm.save_pretrained(final)
        self.s.tokenizer.save_pretrained(final)


def train(setup: RunSetup) -> dict:
    trainer = Trainer(setup)
    trainer.eval_hook = text_eval_hook(trainer, setup.eval_set) if setup.eval_set is not None else None
    return trainer.run(resume=setup.resume)
