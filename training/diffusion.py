"""Diffusion-DPO family trainer: Diffusion-DPO (paper and script forms), SmPO smoothed preferences, DCPO dual
captions (images) and DenseDPO segment-masked loss (video), on diffusers UNet denoisers.

Per pair (methods.md §5): one timestep t and one noise ε shared by winner and loser; the per-example denoising
error e = mean_{C,H,W} ‖target − model(x_t, t, c)‖² for the policy and the reference; the loss comes from
`training.losses.LOSSES` (never re-implemented here). DCPO conditions the loser on its own caption c^l;
DenseDPO keeps per-frame errors and averages them inside each labelled segment. The reference is a frozen
copy of the denoiser, or, with LoRA, the same denoiser with its adapters disabled (one model in memory).
Checkpoints, resume and metrics.jsonl follow the text loop (its helpers are reused)."""
from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.errors import SchemaError
from training.checkpointing import RESUMABLE_CHANGES
from training.checkpointing import precision as _precision
from training.data import open_dataset
from training.diffusion_data import MediaPaths, image_tensor, require_columns, segment_mask, video_tensor
from training.diffusion_lists import ListData, list_batch
from training.loop import StepLoop
from training.losses import LOSSES, DiffusionBatch, LossOut, resolve_loss
from training.plan import Step


class _S(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DenoiserSection(_S):
    kind: Literal["unet2d", "unet3d"] = "unet2d"
    path: str | None = None            # diffusers folder (from_pretrained; a local path works offline)
    subfolder: str | None = None       # e.g. "unet" inside a pipeline folder
    config: dict | None = None         # or a config dict: random init (tests, from-scratch runs)

    @model_validator(mode="after")
    def _one(self):
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of denoiser.path or denoiser.config")
        return self


class TextEncoderSection(_S):
    path: str                          # transformers AutoModel + AutoTokenizer folder; frozen
    max_length: int = Field(32, ge=1)
    # build a tiny random encoder at `path` if it does not exist (diffusion_tiny.py); width = make_tiny_hidden
    make_tiny: bool = False
    make_tiny_hidden: int = Field(32, ge=2)


class DataSection(_S):
    resolution: int = Field(32, ge=8)
    num_frames: int = Field(8, ge=1)           # video: frames fed to the denoiser
    frame_stride: int = Field(1, ge=1)         # video: take every k-th source frame
    temporal_factor: int = Field(1, ge=1)      # frames per latent frame (temporal VAE); 1 in pixel space
    media_root: str | None = None              # where media/<sha> URIs live (default: catalog dir / file dir)
    base_dir: str | None = None                # other relative URIs (default: same as media_root)
    alpha_column: str | None = None            # SmPO: per-pair smoothed preference α


class LoraSection(_S):
    r: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


class TrainSection(_S):
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-5, gt=0)
    max_steps: int = Field(10, ge=1)
    seed: int = 0
    max_grad_norm: float | None = Field(1.0, gt=0)
    num_train_timesteps: int = Field(1000, ge=1)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    save_every: int = Field(0, ge=0)
    log_every: int = Field(1, ge=1)


class DiffusionRecipe(_S):
    denoiser: DenoiserSection
    text_encoder: TextEncoderSection
    dataset: str                       # catalog name[@version] or a parquet/Arrow file
    catalog: str | None = None
    loss: dict
    output_dir: str
    vae: str | None = None             # AutoencoderKL folder; None = pixel space
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    lora: LoraSection | None = None

    @model_validator(mode="after")
    def _loss(self):
        spec, _ = self.loss_spec()
        if spec.kind not in ("diffusion", "list"):
            names = sorted(n for n, s in LOSSES.items() if s.kind == "diffusion")   # from the registry: no drift
            raise ValueError(f"loss {self.loss.get('name')!r} is a {spec.kind} loss; diffusion training needs one "
                             f"of the diffusion losses ({', '.join(names)}) or a listwise loss on image lists")
        if spec.kind == "list" and self.denoiser.kind != "unet2d":
            raise ValueError("listwise diffusion training (image lists) needs an image denoiser (kind unet2d)")
        video = "segments" in spec.needs
        if video != (self.denoiser.kind == "unet3d"):
            raise ValueError("densedpo_segment_mean needs a video denoiser (kind unet3d) and the image losses a 2D one")
        return self

    def loss_spec(self):
        return resolve_loss(self.loss.get("name"), {k: v for k, v in self.loss.items() if k != "name"})

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    def canonical(self) -> dict:
        return self.model_dump(mode="json")


def load_diffusion_recipe(path: str | Path) -> DiffusionRecipe:
    from training.recipe import read_recipe_yaml, validate_recipe
    return validate_recipe(DiffusionRecipe, read_recipe_yaml(path), file=str(path))


# ---------------------------------------------------------------- the math of one pair batch

def denoising_errors(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                     scheduler, *, per_frame: bool = False) -> torch.Tensor:
    """Per-example MSE over (C,H,W) — [N] for images, [N, F] per frame for video ([N,C,F,H,W])."""
    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    err = (model(noisy, t, encoder_hidden_states=cond).sample.float() - target.float()) ** 2
    return err.mean(dim=(1, 3, 4)) if per_frame else err.mean(dim=tuple(range(1, err.ndim)))


@contextmanager
def _adapters_off(model):
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def pair_batch(policy, reference, x_w, x_l, c_w, c_l, t, noise, scheduler, *, seg_mask=None, seg_pref=None,
               alpha=None) -> DiffusionBatch:
    """Winner and loser share t and ε and go through the denoiser in one forward. `reference=None` means the
    policy with its LoRA adapters disabled. `seg_mask` [B,S,F]: DenseDPO segments over model frames."""
    b = x_w.shape[0]
    x, n = torch.cat([x_w, x_l]), torch.cat([noise, noise])
    tt, c = torch.cat([t, t]), torch.cat([c_w, c_l])
    video = seg_mask is not None
    pol = denoising_errors(policy, x, n, tt, c, scheduler, per_frame=video)
    with torch.no_grad():
        if reference is None:
            with _adapters_off(getattr(policy, "module", policy)):   # unwrap DDP to reach the adapters
                ref = denoising_errors(policy, x, n, tt, c, scheduler, per_frame=video)
        else:
            ref = denoising_errors(reference, x, n, tt, c, scheduler, per_frame=video)
    if not video:
        return DiffusionBatch(mse_pol_w=pol[:b], mse_pol_l=pol[b:], mse_ref_w=ref[:b], mse_ref_l=ref[b:], alpha=alpha)
    m = torch.cat([seg_mask, seg_mask]).to(pol.dtype)
    seg = lambda e: (e[:, None, :] * m).sum(-1) / m.sum(-1).clamp(min=1)  # noqa: E731  [2B, S]
    sp, sr = seg(pol), seg(ref)
    # every segment that maps to no model frame is a tie: it must not contribute
    pref = torch.where(seg_mask.sum(-1) > 0, seg_pref, torch.zeros_like(seg_pref))
    return DiffusionBatch(seg_mse_pol_w=sp[:b], seg_mse_pol_l=sp[b:], seg_mse_ref_w=sr[:b], seg_mse_ref_l=sr[b:],
                          seg_pref=pref, mse_pol_w=pol[:b].mean(-1), mse_pol_l=pol[b:].mean(-1),
                          mse_ref_w=ref[:b].mean(-1), mse_ref_l=ref[b:].mean(-1))


# ---------------------------------------------------------------- models and data

def build_denoiser(sec: DenoiserSection):
    from diffusers import UNet2DConditionModel, UNet3DConditionModel
    cls = UNet3DConditionModel if sec.kind == "unet3d" else UNet2DConditionModel
    if sec.config is not None:
        return cls(**sec.config)
    return cls.from_pretrained(sec.path, subfolder=sec.subfolder)


class TextEncoder:
    """Frozen text encoder; embeddings cached per string (captions repeat across pairs and epochs)."""

    def __init__(self, sec: TextEncoderSection, device):
        from transformers import AutoModel, AutoTokenizer
        if sec.make_tiny and not Path(sec.path).exists():
            from training.diffusion_tiny import make_tiny_text_encoder
            make_tiny_text_encoder(sec.path, hidden_size=sec.make_tiny_hidden)
        self.tok = AutoTokenizer.from_pretrained(sec.path)
        self.model = AutoModel.from_pretrained(sec.path).eval().to(device).requires_grad_(False)
        self.max_length, self.device, self.cache = sec.max_length, device, {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        todo = [s for s in dict.fromkeys(texts) if s not in self.cache]
        if todo:
            enc = self.tok(todo, padding="max_length", truncation=True, max_length=self.max_length,
                           return_tensors="pt").to(self.device)
            for s, h in zip(todo, self.model(**enc).last_hidden_state, strict=True):
                self.cache[s] = h
        return torch.stack([self.cache[s] for s in texts])


class PairData:
    """Rows of a pairs table with the columns the loss needs; pixels decoded per batch (not held in RAM)."""

    def __init__(self, recipe: DiffusionRecipe, spec):
        ds = open_dataset(recipe.dataset, recipe.catalog)
        self.ref = ds.ref
        t = ds.table
        cols = t.column_names
        self.video = "segments" in spec.needs
        self.dcpo = recipe.loss.get("name") == "dcpo"
        need = ["prompt"] + (["video_chosen", "video_rejected", "segment_pref", "segment_frames"] if self.video
                             else ["images"]) + (["caption_rejected"] if self.dcpo else [])
        if recipe.data.alpha_column:
            need.append(recipe.data.alpha_column)
        require_columns(cols, need, f"loss {recipe.loss.get('name')!r}")
        if recipe.data.media_root:
            root = Path(recipe.data.media_root)
        elif ds.name is not None:                  # catalog dataset: media live under the catalog directory
            from training.data import open_catalog
            root = Path(open_catalog(recipe.catalog).root)
        else:                                      # a parquet/Arrow file: media relative to its folder
            root = Path(ds.path).parent
        self.paths = MediaPaths(root, Path(recipe.data.base_dir) if recipe.data.base_dir else root)
        rows = t.select(need + (["caption"] if "caption" in cols else [])).to_pylist()
        self.rows, self.dropped = [], 0
        for r in rows:
            ok = all(r.get(c) is not None for c in need) and (self.video or len(r["images"]) == 2)
            if ok:
                self.rows.append(r)
            else:
                self.dropped += 1
        self.drop_reason = f"missing {', '.join(need)}" + ("" if self.video else " or not 2 images")
        if not self.rows:
            raise SchemaError(f"dataset {ds.ref} has no usable pairs ({self.dropped} rows lack {need})")
        self.d, self.alpha_col = recipe.data, recipe.data.alpha_column

    def __len__(self):
        return len(self.rows)

    def batch(self, idx: list[int]) -> dict:
        rows, d = [self.rows[i] for i in idx], self.d
        out = {"c_w": [r.get("caption") or r["prompt"] for r in rows]}
        out["c_l"] = [r["caption_rejected"] for r in rows] if self.dcpo else out["c_w"]
        if self.alpha_col:
            out["alpha"] = torch.tensor([float(r[self.alpha_col]) for r in rows])
        if not self.video:
            out["x_w"] = torch.stack([image_tensor(self.paths.resolve(r["images"][0]), d.resolution) for r in rows])
            out["x_l"] = torch.stack([image_tensor(self.paths.resolve(r["images"][1]), d.resolution) for r in rows])
            return out
        load = lambda u: video_tensor(self.paths.resolve(u), d.resolution, d.num_frames, d.frame_stride)  # noqa: E731
        out["x_w"] = torch.stack([load(r["video_chosen"]) for r in rows])
        out["x_l"] = torch.stack([load(r["video_rejected"]) for r in rows])
        s_max = max(len(r["segment_pref"]) for r in rows)
        n_lat = -(-d.num_frames // d.temporal_factor)
        mask, pref = torch.zeros(len(rows), s_max, n_lat), torch.zeros(len(rows), s_max, dtype=torch.int8)
        for i, r in enumerate(rows):   # pad segments with ties (label 0 contributes nothing)
            k = len(r["segment_pref"])
            mask[i, :k] = segment_mask(r["segment_frames"], d.num_frames, d.frame_stride, d.temporal_factor)
            pref[i, :k] = torch.tensor(r["segment_pref"], dtype=torch.int8)
        out["seg_mask"], out["seg_pref"] = mask, pref
        return out


# ---------------------------------------------------------------- the loop

def _step_rng(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)   # t, ε and order are a function of the step


def _order(n: int, seed: int, steps: int, bs: int) -> list[list[int]]:
    idx: list[int] = []
    epoch = 0
    while len(idx) < steps * bs:
        idx += torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        epoch += 1
    return [idx[i * bs:(i + 1) * bs] for i in range(steps)]


class DiffusionTrainer(StepLoop):
    """Diffusion-DPO family on a diffusers denoiser, run by the text trainer's loop (`loop.StepLoop`: metrics,
    checkpoints, exact resume, refusals, DDP sharding). A step's timesteps and noise are drawn from a generator
    seeded by (seed, step) for the whole batch, so a resumed or sharded run draws the same ones."""
    label = "train diffusion"
    # the learning rate is constant, so a finished run may be resumed with more steps and stay exact
    resumable_changes = (*RESUMABLE_CHANGES, "train.max_steps")

    def __init__(self, recipe: DiffusionRecipe):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        tr = self.tr = recipe.train
        self.recipe, self.spec = recipe, recipe.loss_spec()
        self.acc = Accelerator(mixed_precision=_precision(tr.mixed_precision), cpu=not torch.cuda.is_available())
        torch.manual_seed(tr.seed)
        self.out_dir = Path(recipe.output_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.lists = self.spec[0].kind == "list"   # RankDPO / Syn-Pic image lists (diffusion_lists.py)
        self.data = ListData(recipe, open_dataset(recipe.dataset, recipe.catalog)) if self.lists else \
            PairData(recipe, self.spec[0])
        dropped = {self.data.drop_reason: self.data.dropped} if self.data.dropped else {}   # by reason, as text runs
        self.dataset_ref, self.info, self.log_event, self.bco = self.data.ref, {"rows_dropped": dropped}, \
            None, None
        self.text = TextEncoder(recipe.text_encoder, self.acc.device)
        policy = build_denoiser(recipe.denoiser)
        if recipe.lora is not None:
            from peft import LoraConfig
            policy.requires_grad_(False)
            policy.add_adapter(LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                          target_modules=recipe.lora.target_modules, init_lora_weights=True))
            self.reference = None                                   # adapters off = the reference
        else:
            self.reference = copy.deepcopy(policy).requires_grad_(False).eval().to(self.acc.device)
        self.vae = None
        if recipe.vae:
            from diffusers import AutoencoderKL
            self.vae = AutoencoderKL.from_pretrained(recipe.vae).eval().requires_grad_(False).to(self.acc.device)
        self.noise_sched = DDPMScheduler(num_train_timesteps=tr.num_train_timesteps, prediction_type=tr.prediction_type)
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=tr.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        self.model, self.opt = self.acc.prepare(policy, opt)
        self.acc.register_for_checkpointing(self.sched)
        self.plan = [Step(None, (tuple(b),)) for b in _order(len(self.data), tr.seed, tr.max_steps, tr.batch_size)]

    def latents(self, x):
        if self.vae is None:
            return x
        if x.ndim == 5:   # frame-wise 2D VAE: [B,C,F,H,W] -> encode B·F frames -> back
            b, c, f, h, w = x.shape
            z = self.latents(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
            return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def before_step(self, step: int) -> None:
        self.step = step

    def step_loss(self, idx: tuple[int, ...]):
        full = self.plan[self.step].micro[0]
        # this process's positions in the step's batch (StepLoop gives it every world-th row); positions, not a
        # lookup by row id, since a batch that spans two epochs may hold the same row twice
        pos = torch.arange(self.acc.process_index, len(full), self.acc.num_processes)
        b, dev = self.data.batch(list(idx)), self.acc.device
        g = _step_rng(self.tr.seed, self.step)
        if self.lists:
            return self.list_step_loss(b, g, full, pos)
        with torch.no_grad():
            x_w, x_l = self.latents(b["x_w"].to(dev)), self.latents(b["x_l"].to(dev))
        t = torch.randint(0, self.tr.num_train_timesteps, (len(full),), generator=g)[pos].to(dev)
        noise = torch.randn((len(full), *x_w.shape[1:]), generator=g)[pos].to(dev)
        with self.acc.autocast():
            batch = pair_batch(self.model, self.reference, x_w, x_l, self.text(b["c_w"]), self.text(b["c_l"]), t,
                               noise, self.noise_sched, seg_mask=b.get("seg_mask"), seg_pref=b.get("seg_pref"),
                               alpha=b.get("alpha"))
            lo: LossOut = self.spec[0].fn(batch, self.spec[1])
        lo.metrics |= {k: getattr(batch, k).detach() for k in ("mse_pol_w", "mse_pol_l", "mse_ref_w", "mse_ref_l")}
        return lo.loss.sum(), lo, 0, None

    def list_step_loss(self, b: dict, g: torch.Generator, full, pos):
        dev = self.acc.device
        with torch.no_grad():
            x = self.latents(b["x"].flatten(0, 1).to(dev))
        x = x.reshape(*b["mask"].shape, *x.shape[1:])
        t = torch.randint(0, self.tr.num_train_timesteps, (len(full),), generator=g)[pos].to(dev)
        noise = torch.randn((len(full), *x.shape[2:]), generator=g)[pos].to(dev)

        def errors(xs, ns, ts, cs, reference):
            if not reference:
                return denoising_errors(self.model, xs, ns, ts, cs, self.noise_sched)
            if self.reference is None:
                with _adapters_off(getattr(self.model, "module", self.model)):
                    return denoising_errors(self.model, xs, ns, ts, cs, self.noise_sched)
            return denoising_errors(self.reference, xs, ns, ts, cs, self.noise_sched)

        with self.acc.autocast():
            batch = list_batch(errors, x, b["mask"], b["scores"], self.text(b["c"]), t, noise)
            lo: LossOut = self.spec[0].fn(batch, self.spec[1])
        return lo.loss.sum(), lo, 0, None

    def save_final(self, final: Path) -> None:
        model = self.acc.unwrap_model(self.model)
        if self.recipe.lora is not None:
            model.save_lora_adapter(str(final))
        else:
            model.save_pretrained(str(final))


def train_diffusion(recipe: DiffusionRecipe, *, resume: bool = False) -> dict:
    return DiffusionTrainer(recipe).run(resume=resume)


def train_diffusion_from_recipe(path: str | Path, *, resume: bool = False) -> dict:
    """CLI entry: `prefdata train RECIPE` for recipes with a `denoiser:` section."""
    return train_diffusion(load_diffusion_recipe(path), resume=resume)
