"""Checkpoint and metrics helpers shared by the trainers (text loop, diffusion, VLM).

One layout for every trainer: `output_dir/checkpoints/step-NNNNNN/` holds accelerate's `save_state` (model,
optimizer, registered scheduler, RNG states) plus `trainer_state.json` (step = data position, dataset
`name@version`, canonical recipe, its sha256, last metrics) and optionally `trainer_extra.pt`. A checkpoint is
written to `step-NNNNNN.tmp` and renamed, so a killed run leaves either a complete checkpoint or none.
`output_dir/metrics.jsonl` has one JSON object per logged step; lines a killed run wrote after its last
checkpoint are dropped on resume and recomputed."""
from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import torch


def precision(mode: str) -> str:
    """Recipe `mixed_precision` -> accelerate's: auto is bf16 on a GPU that supports it, fp32 elsewhere."""
    if mode == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mode


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a `.tmp` dir is an interrupted write)."""
    return sorted(p for p in (out_dir / "checkpoints").glob("step-*") if not p.name.endswith((".tmp", ".old")))


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (they are recomputed on resume)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= last_step]
        path.write_text("".join(ln + "\n" for ln in keep))


def write_checkpoint(acc, out_dir: Path, step: int, state: dict, extra: dict | None = None) -> Path:
    """accelerate state + `trainer_state.json` ({"step": step, **state}) + `trainer_extra.pt` (when `extra`),
    renamed into place only once complete. Every process must call it (save_state synchronises)."""
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()   # every process's RNG state is in tmp before it is renamed (DDP)
    if acc.is_main_process:
        if extra is not None:
            torch.save(extra, tmp / "trainer_extra.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2, default=str))
        if final.exists():  # the same step written again (a rerun over a resumed run): swap, then drop the old
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            final.replace(old)
            tmp.replace(final)
            shutil.rmtree(old)
        else:
            tmp.replace(final)  # atomic: a checkpoint dir either is complete or does not exist
        train = (state.get("recipe") or {}).get("train") or {}
        prune_checkpoints(out_dir, keep=train.get("save_total_limit"),
                          optimizer_everywhere=train.get("optimizer_state") == "all")
    acc.wait_for_everyone()
    return final


# accelerate's save_state files that only resume reads (the AdamW moments are twice the weights in fp32)
OPTIMIZER_FILES = ("optimizer*.bin", "optimizer*.safetensors", "optimizer*.pt")


def prune_checkpoints(out_dir: Path, keep: int | None = None, *, optimizer_everywhere: bool = False) -> list[Path]:
    """Retention after a checkpoint is written: only the newest keeps its optimizer state (resume starts from it;
    an older checkpoint stays a loadable model: weights, RNG and trainer state); with `keep`, only the newest
    `keep` checkpoints are kept at all; `optimizer_everywhere` (train.optimizer_state: all) keeps every optimizer
    state. Returns the checkpoints removed."""
    ckpts = checkpoint_dirs(out_dir)
    removed = ckpts[:-keep] if keep else []
    for d in removed:
        shutil.rmtree(d)
    for d in ckpts[len(removed):-1] if not optimizer_everywhere else []:
        for pattern in OPTIMIZER_FILES:
            for f in d.glob(pattern):
                f.unlink()
    return removed


def disk_use(out_dir: Path) -> dict:
    """MB the run's folder takes on disk, in all and in checkpoints (reported in the run's summary)."""
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
    mb = lambda n: round(n / 2**20, 1)   # noqa: E731
    return {"total_mb": mb(size(out_dir)), "checkpoints_mb": mb(size(out_dir / "checkpoints")),
            "checkpoints": len(checkpoint_dirs(out_dir))}


RESUMABLE_CHANGES = ("output_dir", "train.save_every", "train.log_every", "train.save_total_limit",
                     "train.optimizer_state", "train.sr_adamw")


def check_resumable(out_dir: Path, dataset_ref: str, recipe: dict, allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """A resumed run must train on the same rows with the same settings: the plan's row indices and the
    optimizer state mean nothing otherwise (only RESUMABLE_CHANGES may differ). Raises PrefdataError."""
    from prefdata.errors import PrefdataError
    ckpts = checkpoint_dirs(out_dir)
    if not ckpts:
        return
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    if state.get("dataset") != dataset_ref:
        raise PrefdataError(f"{ckpts[-1]} trained on {state.get('dataset')}, but the recipe's dataset is now "
                            f"{dataset_ref}; pin the version it trained on (dataset: NAME@VERSION)")

    def comparable(rec: dict) -> dict:
        rec = {k: v for k, v in rec.items() if k != "output_dir"}
        rec["train"] = {k: v for k, v in rec.get("train", {}).items() if f"train.{k}" not in allowed}
        return rec

    old, new = comparable(state.get("recipe", {})), comparable(recipe)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise PrefdataError(f"cannot resume {out_dir}: the recipe's {', '.join(changed)} differ from the "
                            f"checkpoint's ({ckpts[-1].name}); resume with the recipe it was started with")


def load_latest_checkpoint(acc, out_dir: Path, metrics_path: Path) -> tuple[int, dict | None]:
    """Restore the newest checkpoint into `acc`'s prepared objects; returns (step, trainer_extra or None).
    (0, None) when there is none: the run starts from scratch."""
    ckpts = checkpoint_dirs(out_dir)
    if not ckpts:
        return 0, None
    acc.load_state(str(ckpts[-1]))
    extra_path = ckpts[-1] / "trainer_extra.pt"
    extra = torch.load(extra_path, weights_only=False) if extra_path.exists() else None
    step = json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"]
    if acc.is_main_process:   # the one writer of metrics.jsonl
        truncate_metrics(metrics_path, step)
    return step, extra
