"""Benchmark: forward + backward time of every registered loss on a synthetic batch, and the overhead of the
registry path (resolve once, then LOSSES[name].fn(batch, params)) against a bare inline DPO expression.

Pair losses get B pairs (token-level inputs of T tokens for LD-DPO), KTO B completions, list losses B prompts
x K=4, diffusion losses B pairs (DenseDPO: S=8 segments). float32 on the chosen device; the median of
`--reps` timed calls after warm-up. Also times `spec_cases.evaluate` over the public json (cases/s).
Prints ONE JSON line. `python benchmarks/bench_losses.py --batch 4096 --device cpu`."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.losses import (  # noqa: E402
    ALIASES,
    LOSSES,
    DiffusionBatch,
    ListBatch,
    PairBatch,
    UnpairedBatch,
    resolve_loss,
)
from training.spec_cases import evaluate  # noqa: E402

HP = {"smpo_smoothed_dpo": {"alpha": 0.9}, "smpo_diffusion": {"alpha": 0.9}}


def make(kind: str, b: int, dev: str, t: int = 64, k: int = 4, s: int = 8):
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0, shift=0.0, grad=False):
        x = (torch.randn(*shape, generator=g) * scale + shift).to(dev)
        return x.requires_grad_(grad)

    if kind == "pair":
        tok = [r(b, t, scale=0.2, shift=-1.0, grad=i < 2) for i in range(4)]
        mask = torch.ones(b, t, dtype=torch.bool, device=dev)
        pc, pr = tok[0].sum(-1), tok[1].sum(-1)
        n = torch.full((b,), float(t), device=dev)
        return PairBatch(pol_chosen=pc, pol_rejected=pr, ref_chosen=tok[2].sum(-1), ref_rejected=tok[3].sum(-1),
                         n_chosen=n, n_rejected=n, nll_chosen=-pc.sum() / n.sum(), tok_pol_chosen=tok[0],
                         tok_pol_rejected=tok[1], tok_ref_chosen=tok[2], tok_ref_rejected=tok[3],
                         tok_mask_chosen=mask, tok_mask_rejected=mask, kl_chosen=r(b).abs(), kl_rejected=r(b).abs(),
                         rm_margin=r(b).abs(), other_chosen=r(b), other_rejected=r(b))
    if kind == "unpaired":
        return UnpairedBatch(pol=r(b, grad=True), ref=r(b), label=torch.rand(b, generator=g).to(dev) > 0.5,
                             kl_pol=r(b), kl_ref=r(b))
    if kind == "list":
        return ListBatch(pol=r(b, k, grad=True), ref=r(b, k), scores=r(b, k))
    seg = (torch.rand(b, s, generator=g) * 1e-3 + 0.1).to(dev).requires_grad_()
    pref = torch.randint(-1, 2, (b, s), generator=g, dtype=torch.int8).to(dev)
    return DiffusionBatch(mse_pol_w=r(b, scale=1e-3, shift=0.1, grad=True), mse_pol_l=r(b, scale=1e-3, shift=0.1),
                          mse_ref_w=r(b, scale=1e-3, shift=0.1), mse_ref_l=r(b, scale=1e-3, shift=0.1),
                          seg_mse_pol_w=seg, seg_mse_pol_l=seg.detach() + 1e-4, seg_mse_ref_w=seg.detach(),
                          seg_mse_ref_l=seg.detach(), seg_pref=pref)


def timed(fn, reps: int, dev: str) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(reps):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    per_loss = {}
    for name in sorted(set(LOSSES) - set(ALIASES)):
        spec, params = resolve_loss(name, HP.get(name, {}))
        batch = make(spec.kind, a.batch, a.device)

        def step(spec=spec, params=params, batch=batch):
            spec.fn(batch, params).loss.mean().backward(retain_graph=True)

        per_loss[name] = round(timed(step, a.reps, a.device) * 1e6, 1)

    # registry path vs the same DPO written inline (what the abstraction costs)
    spec, params = resolve_loss("dpo_sigmoid", {"beta": 0.1})
    b = make("pair", a.batch, a.device)

    def inline():
        h = (b.pol_chosen - b.ref_chosen) - (b.pol_rejected - b.ref_rejected)
        (-torch.nn.functional.logsigmoid(0.1 * h)).mean().backward(retain_graph=True)

    bare_us = timed(inline, a.reps, a.device) * 1e6
    cases = json.loads((ROOT / "tests" / "data" / "spec" / "reference_values.json").read_text())
    t0 = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for c in cases:
            evaluate(c)
    cases_per_s = rounds * len(cases) / (time.perf_counter() - t0)
    print(json.dumps({
        "bench": "losses", "device": a.device, "batch": a.batch, "dtype": "float32", "threads": torch.get_num_threads(),
        "fwd_bwd_us_median": per_loss, "dpo_inline_us": round(bare_us, 1),
        "dpo_registry_us": per_loss["dpo_sigmoid"], "spec_cases_per_s": round(cases_per_s),
        "n_losses": len(per_loss), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
