"""Forward-only preference metrics on held-out rows: during training (the recipe's `eval:` section, before the
first step, every `every` steps and after the last) and for other callers (`preference_metrics`, e.g. the
`prefdata eval` command).

An eval runs the recipe's loss through the same `LOSSES` function as training, on batches built by the same code
(`batches.make_batch`, `unpaired.unpaired_batch`), under `torch.no_grad()` with the model in eval mode, and puts
everything back: train mode, the global torch RNG state (CPU and CUDA), no optimizer, scheduler or data-order
state is touched. So a run with `eval:` logs exactly the training losses of the same run without it.

Reference log-probs of the eval rows come from the stored reference pass (run once on the eval rows, like
training's) or the eval table's own columns; a reference-free loss (or `reference.free`) uses 0 and reports no
log-prob shifts. Metrics (every key starts with `eval/`):
- pairs: loss, reward_accuracy (implicit reward of chosen > rejected, the LossOut rewards the training metrics
  use: beta * (logp - ref_logp) for DPO), margin (mean reward difference), chosen_logp / rejected_logp (mean
  summed policy log-probs), chosen_logp_shift / rejected_logp_shift (mean policy minus reference log-prob) and
  likelihood_displacement (both shifts below -0.01 nats: the policy lowers the chosen responses' likelihood too);
- lists: loss, top1_accuracy (the response with the highest implicit reward beta * (logp - ref_logp) is a
  top-labelled one; reward ties share the credit, label ties all count), kendall_tau (mean over prompts of
  Kendall's tau-b between implicit rewards and labels; prompts where it is undefined, e.g. all rewards tied,
  are left out and counted in kendall_tau_undefined);
- unpaired (KTO): loss, accuracy (implicit reward beta * (logp - ref_logp) above 0 for desirable, below 0 for
  undesirable examples), reward_desirable / reward_undesirable; z0 is estimated per eval batch, as in training.
Means are over rows (pairs, prompts; KTO: examples), unweighted; losses with a batch-level term (the NLL of RPO,
CPO, SimPO with alpha_nll) take it per eval batch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from prefdata.errors import PrefdataError
from training.batches import RefStore, make_batch
from training.data import DataOptions, TrainData, build_train_data, table_kind
from training.forward import group_logps
from training.losses import LossOut, LossSpec, resolve_loss
from training.recipe import SUPPORTED_KINDS, online_reference
from training.unpaired import unpaired_batch

PREFIX = "eval/"
# likelihood displacement = both mean shifts below -DISPLACEMENT_TOL nats: under bf16 the policy's and the stored
# reference pass's log-probs of the same model differ by forward noise (step 0 on an H200: |shift| <= 3e-4 for a
# 0.5B model over 62 pairs of <= 512 tokens), which must not raise the warning; real displacement is nats
DISPLACEMENT_TOL = 0.01


@dataclass
class EvalSet:
    """Tokenized eval rows with their reference log-probs."""
    data: TrainData
    ref: RefStore
    has_reference: bool          # False: reference-free (ref = 0), so no log-prob shifts are reported
    info: dict = field(default_factory=dict)   # source, rows_in, rows, rows_dropped


def make_eval_set(table: pa.Table, tokenizer, *, max_length: int, required: tuple[str, ...], has_reference: bool,
                  free: bool, options: DataOptions | None = None, source: str = "") -> EvalSet:
    """`free`: the loss's reference log-probs are zeros (reference-free, or the reference runs online)."""
    data = build_train_data(table, tokenizer, max_length=max_length, required=required, options=options)
    if not data.groups:
        raise PrefdataError(f"eval rows ({source or 'table'}): none can be evaluated ({dict(data.dropped)})")
    info = {"source": source, "rows_in": data.rows_in, "rows": len(data.groups), "rows_dropped": dict(data.dropped)}
    return EvalSet(data, RefStore(data, free=free), has_reference, info)


class EvalSums:
    """Metric sums kept on the device (no host sync per batch) and read back once."""

    def __init__(self):
        self.s: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().double().sum()
        self.s[key] = self.s[key] + v if key in self.s else v

    def read(self) -> dict[str, float]:
        keys = sorted(self.s)
        return dict(zip(keys, torch.stack([self.s[k] for k in keys]).tolist(), strict=True)) if keys else {}


def _mean(s: dict, key: str, n: float):
    return s[key] / n if n and key in s else None


def add_pairs(sums: EvalSums, lo: LossOut, pol_c, pol_r, ref_c=None, ref_r=None) -> None:
    """One batch of pairs (shared with the VLM trainer's eval)."""
    sums.add("loss", lo.loss)
    sums.add("rows", torch.ones_like(pol_c))
    if lo.chosen_reward is not None and lo.rejected_reward is not None:
        cr, rr = lo.chosen_reward.double(), lo.rejected_reward.double()
        sums.add("acc", (cr > rr).double())
        sums.add("margin", cr - rr)
    sums.add("chosen_logp", pol_c)
    sums.add("rejected_logp", pol_r)
    if ref_c is not None:
        sums.add("chosen_shift", pol_c.double() - ref_c.double())
        sums.add("rejected_shift", pol_r.double() - ref_r.double())


def pair_metrics(s: dict, has_reference: bool) -> dict:
    n = s["rows"]
    m = {"loss": s["loss"] / n, "reward_accuracy": _mean(s, "acc", n), "margin": _mean(s, "margin", n),
         "chosen_logp": s["chosen_logp"] / n, "rejected_logp": s["rejected_logp"] / n}
    if has_reference:
        m["chosen_logp_shift"] = s["chosen_shift"] / n
        m["rejected_logp_shift"] = s["rejected_shift"] / n
        m["likelihood_displacement"] = max(m["chosen_logp_shift"], m["rejected_logp_shift"]) < -DISPLACEMENT_TOL
    return m | {"rows": int(n)}


def add_lists(sums: EvalSums, lo: LossOut, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> None:
    """Top-1 accuracy and Kendall tau-b of implicit rewards vs labels, per prompt, vectorized over the batch."""
    sums.add("loss", lo.loss)
    sums.add("rows", torch.ones(len(rewards), device=rewards.device))
    r, s, valid = rewards.double(), scores.double(), mask.bool()
    neg = torch.tensor(float("-inf"), dtype=r.dtype, device=r.device)
    at_max = (r == torch.where(valid, r, neg).amax(-1, keepdim=True)) & valid
    top = (s == torch.where(valid, s, neg).amax(-1, keepdim=True)) & valid
    sums.add("top1", (at_max & top).sum(-1).double() / at_max.sum(-1).double())
    K = r.shape[1]
    upper = torch.ones(K, K, dtype=torch.bool, device=r.device).triu(1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper                       # i < j, both valid
    dr = torch.sign(r[:, :, None] - r[:, None, :])
    ds = torch.sign(s[:, :, None] - s[:, None, :])
    n0 = pairs.sum((-1, -2)).double()
    untied_r = (pairs & (dr != 0)).sum((-1, -2)).double()
    untied_s = (pairs & (ds != 0)).sum((-1, -2)).double()
    concord = torch.where(pairs, dr * ds, torch.zeros_like(dr)).sum((-1, -2))   # concordant - discordant
    denom = torch.sqrt(untied_r * untied_s)
    defined = (denom > 0) & (n0 > 0)
    sums.add("tau", torch.where(defined, concord / torch.where(defined, denom, torch.ones_like(denom)),
                                torch.zeros_like(denom)))
    sums.add("tau_n", defined.double())


def list_metrics(s: dict) -> dict:
    n = s["rows"]
    return {"loss": s["loss"] / n, "top1_accuracy": s["top1"] / n,
            "kendall_tau": s["tau"] / s["tau_n"] if s["tau_n"] else None,
            "kendall_tau_undefined": int(n - s["tau_n"]), "rows": int(n)}


def add_unpaired(sums: EvalSums, lo: LossOut, label: torch.Tensor) -> None:
    r, d = lo.chosen_reward.double(), label.bool()
    sums.add("loss", lo.loss)
    sums.add("examples", torch.ones_like(r))
    sums.add("correct", torch.where(d, r > 0, r < 0).double())
    sums.add("rd", torch.where(d, r, torch.zeros_like(r)))
    sums.add("nd", d.double())
    sums.add("ru", torch.where(d, torch.zeros_like(r), r))


def unpaired_metrics(s: dict, rows: int) -> dict:
    n = s["examples"]
    return {"loss": s["loss"] / n, "accuracy": s["correct"] / n, "reward_desirable": _mean(s, "rd", s["nd"]),
            "reward_undesirable": _mean(s, "ru", n - s["nd"]), "examples": int(n), "rows": rows}


class Evaluator:
    """The loss's forward over an `EvalSet`, in batches of `batch_size` rows (table order), `token_budget`
    padded tokens per forward. `model` is a `SequenceLogps` (the trainer's, unwrapped from DDP)."""

    def __init__(self, spec: LossSpec, params, eval_set: EvalSet, *, pad_id: int, batch_size: int,
                 token_budget: int, layout: str):
        self.spec, self.params, self.es = spec, params, eval_set
        self.pad_id, self.batch_size, self.token_budget, self.layout = pad_id, batch_size, token_budget, layout

    def _logps(self, model, groups, device, **kw):
        return group_logps(model, groups, pad_id=self.pad_id, device=device, token_budget=self.token_budget,
                           layout=self.layout, **kw)

    @torch.no_grad()
    def __call__(self, model, device, *, bco_delta: torch.Tensor | None = None, autocast=nullcontext) -> dict:
        """The metrics (keys without the `eval/` prefix). Leaves the model in the mode it found it in."""
        spec, data, ref = self.spec, self.es.data, self.es.ref
        was_training = model.training
        model.eval()
        sums = EvalSums()
        try:
            for s in range(0, len(data.groups), self.batch_size):
                idx = list(range(s, min(len(data.groups), s + self.batch_size)))
                groups = [data.groups[i] for i in idx]
                with autocast():
                    if data.kind == "unpaired":
                        kl_out = self._logps(model, [data.kl_groups[i] for i in idx], device)
                        kl = kl_out.sums.double() - ref.kl[idx].reshape(-1).to(device)
                        z0 = torch.clamp(kl.mean(), min=0)   # KTO's reference point, from this batch (as training)
                        out = self._logps(model, groups, device)
                        b = unpaired_batch(out, data, torch.tensor(idx), ref.seq, z0, device)
                    else:
                        out = self._logps(model, groups, device, with_tokens="token_logps" in spec.needs,
                                          with_kl="seq_kl" in spec.needs)
                        b = make_batch(spec, out, data, torch.tensor(idx), ref, device, bco_delta)
                    lo = spec.fn(b, self.params)
                if data.kind == "pairs":
                    has = self.es.has_reference
                    add_pairs(sums, lo, b.pol_chosen, b.pol_rejected, b.ref_chosen if has else None,
                              b.ref_rejected if has else None)
                elif data.kind == "lists":
                    rew = self.params.beta * (b.pol - b.ref)
                    add_lists(sums, lo, rew, b.scores, b.mask)
                else:
                    add_unpaired(sums, lo, b.label)
        finally:
            model.train(was_training)
        s = sums.read()
        if data.kind == "pairs":
            return pair_metrics(s, self.es.has_reference)
        return list_metrics(s) if data.kind == "lists" else unpaired_metrics(s, len(data.groups))


def prefixed(metrics: dict) -> dict:
    return {f"{PREFIX}{k}": v for k, v in metrics.items()}


DISPLACEMENT = ("eval/chosen_logp_shift", "eval/rejected_logp_shift")


def displacement_warning(row: dict) -> str | None:
    if not row.get("eval/likelihood_displacement"):
        return None
    c, r = (row[k] for k in DISPLACEMENT)
    return (f"likelihood displacement at step {row['step']}: on the eval rows the policy lowered the log-prob of "
            f"the chosen responses ({c:+.4g}) as well as of the rejected ones ({r:+.4g}) relative to the reference")


class EvalHook:
    """When the loop evaluates, and the metrics.jsonl row it writes. `metrics` is a zero-argument callable
    (the trainer's forward over its eval rows); the global RNG state is restored around it, so nothing the eval
    might draw changes the training run."""

    def __init__(self, metrics: Callable[[], dict], every: int, info: dict | None = None):
        self.metrics, self.every, self.info = metrics, every, info or {}

    def due(self, step: int, n_steps: int) -> bool:
        """Before training (step 0), after every `every`-th optimizer step and after the last one."""
        return step in (0, n_steps) or bool(self.every) and step % self.every == 0

    def __call__(self, step: int, console=None) -> dict:
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        try:
            m = self.metrics()
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        row = {"step": step, **prefixed(m), "eval/seconds": time.perf_counter() - t0}
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise FloatingPointError(f"{k} is {v} at step {step}")
        warning = displacement_warning(row)
        if warning and console is not None:
            console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)
        return row


def text_eval_hook(trainer, eval_set: EvalSet) -> EvalHook:
    """The text trainer's eval (loop.Trainer): its policy unwrapped from DDP (a DDP forward would sync buffers
    with processes that are not evaluating), under its autocast, with BCO's current running mean as delta."""
    from training.budget import resolve_token_budget
    s, ev = trainer.s, trainer.s.recipe.eval
    # no-grad forwards keep one layer's activations at a time: the reference pass's budget (run.py)
    budget = resolve_token_budget(s.recipe.train.token_budget, s.lm, trainer.acc.device, grad_checkpointing=True,
                                  mixed_precision=torch.cuda.is_available())
    run = Evaluator(s.spec, s.params, eval_set, pad_id=s.tokenizer.pad_token_id,
                    batch_size=ev.batch_size or s.recipe.reference.batch_size, token_budget=budget,
                    layout=trainer.layout)

    def metrics() -> dict:
        return run(trainer.acc.unwrap_model(trainer.model), trainer.acc.device, autocast=trainer.acc.autocast,
                   bco_delta=trainer.bco.value if trainer.bco is not None else None)

    return EvalHook(metrics, ev.every)


def last_eval_row(metrics_path) -> dict | None:
    """The newest eval row of a run's metrics.jsonl (for run.json), or None."""
    import json
    from pathlib import Path
    p = Path(metrics_path)
    rows = [json.loads(ln) for ln in p.read_text().splitlines() if ln] if p.exists() else []
    evals = [r for r in rows if any(k.startswith(PREFIX) for k in r)]
    return evals[-1] if evals else None


def preference_metrics(lm, tokenizer, table: pa.Table, *, loss: str, loss_params: dict | None = None,
                       max_length: int, batch_size: int = 16, device="cpu", reference_lm=None,
                       options: DataOptions | None = None, token_budget: int = 1024,
                       layout: str = "shared") -> dict:
    """The eval metrics (`eval/*` keys, as logged during training) of an already loaded causal LM on a held-out
    pairs / lists / unpaired table. Reference log-probs: the table's ref columns when present, else computed
    with `reference_lm` (TDPO: `reference_lm` runs beside the policy), else reference-free (ref = 0, no shifts).
    `options`: chat template / KTO choices (default: KTO for the `kto` loss, chat template auto)."""
    from training.logps import SequenceLogps
    from training.reference import compute_reference, with_columns

    spec, params = resolve_loss(loss, dict(loss_params or {}))
    if spec.kind not in SUPPORTED_KINDS:
        raise PrefdataError(f"loss {loss!r} is a {spec.kind} loss; preference metrics cover pair, list and unpaired "
                            "losses")
    opts = options or DataOptions(unpaired=spec.kind == "unpaired", other_rewards="other_rewards" in spec.needs)
    online = online_reference(spec)
    if online and reference_lm is None:
        raise PrefdataError(f"loss {loss!r} needs the reference model beside the policy: pass reference_lm")
    kind = table_kind(table.column_names) if not opts.unpaired else "unpaired"
    want = _ref_columns(spec, table.column_names, opts)
    has_ref = online or ("ref" in spec.needs and (set(want) <= set(table.column_names) or reference_lm is not None))
    if "ref" in spec.needs and not online and not set(want) <= set(table.column_names) and reference_lm is not None:
        table = with_columns(table, compute_reference(reference_lm, tokenizer, table, max_length=max_length,
                                                      device=device, batch_size=batch_size,
                                                      token_budget=token_budget, options=opts, layout=layout,
                                                      with_tokens="token_logps" in spec.needs))
    required = want if has_ref and not online else ()
    if "rm_margin" in spec.needs:
        required += ("margin",)
    es = make_eval_set(table, tokenizer, max_length=max_length, required=required, has_reference=has_ref,
                       free=not has_ref or online, options=opts, source=kind)
    model = SequenceLogps(lm, reference=reference_lm if online else None)
    ev = Evaluator(spec, params, es, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                   token_budget=token_budget, layout=layout)
    return prefixed(ev(model, torch.device(device)))


def _ref_columns(spec: LossSpec, columns, opts: DataOptions) -> tuple[str, ...]:
    from training.data import LIST_REF, PAIR_REF, PAIR_TOK_REF, unpaired_ref_columns
    kind = table_kind(columns)
    if opts.unpaired:
        return unpaired_ref_columns(kind)
    if kind == "lists":
        return (LIST_REF,)
    return PAIR_REF + (PAIR_TOK_REF if "token_logps" in spec.needs else ())
