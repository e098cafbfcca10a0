"""MIA-DPO multi-image pairs from single-image (image, question, answer) data.

Three layouts (methods.md §6(d)):
- sequence: the target plus 1-4 distractors as separate images; the question names "image k";
- grid: target + distractors tiled in an R×C collage (1×2 … 3×3) with fixed cells, margins and labels;
- pic_in_pic: the target scaled down and inset into a corner of a distractor.

Chosen = the gold answer about the target. Rejected = the answer grounded in a distractor image (the one
most easily confused with the target: the neighbouring image/cell, or the background for an inset). This
stands in for the paper's attention-based selection (fraction of attention on the target's visual tokens),
which needs the model's attention maps: an answer that describes the wrong image is exactly the
misattribution the attention rule detects. A distractor whose answer is too close to the gold answer is
skipped (string similarity), so the pair never teaches "prefer A over A".

Everything random comes from a per-row generator seeded by (seed, row key), so outputs do not depend on
row order or on how many threads compose images."""
from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from difflib import SequenceMatcher
from threading import Lock
from typing import ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from builders.base import Built, StepConfig, StepContext
from builders.media import MediaDrop, MediaError, MediaStore, drop_summary, load_image
from prefdata.errors import SchemaError
from prefdata.schema import conform, validate

Mode = Literal["sequence", "grid", "pic_in_pic"]
Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
RGB = tuple[int, int, int]


class MiaDpoConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "pairs"
    image_column: str = "image"            # string URI, or list<string> (the first image is the target)
    answer_column: str = "response"        # gold answer about the image
    question_column: str | None = "prompt"  # None: every row asks `question`
    question: str = "Describe this image in one sentence."
    modes: list[Mode] = Field(default_factory=lambda: ["sequence", "grid", "pic_in_pic"])
    per_row: Literal["each", "cycle"] = "cycle"   # each: one sample per mode per row; cycle: modes in turn
    sequence_images: tuple[int, int] = (2, 5)     # inclusive range of images in a sequence sample
    grid_layouts: list[tuple[int, int]] = Field(default_factory=lambda: [(1, 2), (2, 2), (2, 3), (3, 3)])
    cell_size: tuple[int, int] = (224, 224)       # (width, height) of every grid cell
    margin: int = 8                               # pixels between cells and around the grid
    background: RGB = (255, 255, 255)
    labels: bool = True                           # draw the cell number in a box at each cell's top-left
    label_box: int = 22
    label_color: RGB = (0, 0, 0)
    canvas_size: tuple[int, int] = (448, 448)     # pic-in-pic output size (background is cover-cropped)
    inset_scale: float = Field(0.33, gt=0.05, lt=0.9)   # inset box = scale × canvas on each side
    inset_corner: Corner | Literal["random"] = "random"
    inset_margin: int = 12
    inset_border: int = 3
    inset_border_color: RGB = (255, 255, 255)
    image_token: str = "<image>"                  # one placeholder per image in the prompt (LLaVA/TRL style)
    max_answer_similarity: float = Field(0.8, ge=0.0, le=1.0)  # distractor answers more similar are skipped
    seed: int | None = None                       # None: the build's seed
    threads: int = Field(4, ge=1)
    png_compress_level: int = Field(1, ge=0, le=9)   # zlib level of written collages (lossless at any level)

    @field_validator("sequence_images")
    @classmethod
    def _seq_range(cls, v):
        lo, hi = v
        if not 2 <= lo <= hi <= 5:
            raise ValueError("sequence_images must satisfy 2 <= min <= max <= 5")
        return v

    @field_validator("grid_layouts")
    @classmethod
    def _layouts(cls, v):
        for r, c in v:
            if not (1 <= r <= 3 and 1 <= c <= 3 and r * c >= 2):
                raise ValueError(f"grid layout {r}x{c} outside 1x2 … 3x3")
        if not v:
            raise ValueError("grid_layouts must not be empty")
        return v


# ---------------------------------------------------------------- layout geometry (pure; tested pixel by pixel)

def grid_geometry(rows: int, cols: int, cell: tuple[int, int], margin: int) -> tuple[tuple[int, int], list[tuple]]:
    """Canvas size and each cell's box (x0, y0, x1, y1), x1/y1 exclusive, row-major."""
    cw, ch = cell
    size = (cols * cw + (cols + 1) * margin, rows * ch + (rows + 1) * margin)
    boxes = [(margin + c * (cw + margin), margin + r * (ch + margin),
              margin + c * (cw + margin) + cw, margin + r * (ch + margin) + ch)
             for r in range(rows) for c in range(cols)]
    return size, boxes


def fit_box(img_size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Largest aspect-preserving rectangle inside `box`, centred (letterbox)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    w, h = img_size
    s = min(bw / w, bh / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    ox, oy = x0 + (bw - nw) // 2, y0 + (bh - nh) // 2
    return ox, oy, ox + nw, oy + nh


Resize = Callable[[int, tuple[int, int]], Image.Image]   # (index into the images passed, size) -> resized image


def _plain_resize(images: list[Image.Image]) -> Resize:
    return lambda i, size: images[i].resize(size, Image.Resampling.BILINEAR)


def compose_grid(images: list[Image.Image], rows: int, cols: int, cfg: MiaDpoConfig,
                 resize: Resize | None = None) -> tuple[Image.Image, list]:
    """`resize(i, size)` returns image i scaled to `size` (the build passes a cache of resized cells)."""
    resize = resize or _plain_resize(images)
    size, boxes = grid_geometry(rows, cols, cfg.cell_size, cfg.margin)
    canvas = Image.new("RGB", size, cfg.background)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (img, box) in enumerate(zip(images, boxes, strict=True)):
        fx0, fy0, fx1, fy1 = fit_box(img.size, box)
        canvas.paste(resize(i, (fx1 - fx0, fy1 - fy0)), (fx0, fy0))
        if cfg.labels:
            lb = cfg.label_box
            draw.rectangle((box[0], box[1], box[0] + lb - 1, box[1] + lb - 1), fill=cfg.label_color)
            text = str(i + 1)
            tb = draw.textbbox((0, 0), text, font=font)
            tx = box[0] + (lb - (tb[2] - tb[0])) // 2 - tb[0]
            ty = box[1] + (lb - (tb[3] - tb[1])) // 2 - tb[1]
            draw.text((tx, ty), text, fill=tuple(255 - c for c in cfg.label_color), font=font)
    return canvas, boxes


def inset_geometry(canvas: tuple[int, int], inset_img: tuple[int, int], cfg: MiaDpoConfig,
                   corner: Corner) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(outer box incl. border, image box) for the inset; both (x0, y0, x1, y1), exclusive ends."""
    W, H = canvas
    bw, bh = round(W * cfg.inset_scale), round(H * cfg.inset_scale)
    b = cfg.inset_border
    ix0, iy0, ix1, iy1 = fit_box(inset_img, (0, 0, bw - 2 * b, bh - 2 * b))
    ow, oh = (ix1 - ix0) + 2 * b, (iy1 - iy0) + 2 * b
    m = cfg.inset_margin
    x0 = m if corner.endswith("left") else W - m - ow
    y0 = m if corner.startswith("top") else H - m - oh
    return (x0, y0, x0 + ow, y0 + oh), (x0 + b, y0 + b, x0 + ow - b, y0 + oh - b)


def cover_size(img_size: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(scaled size, centre-crop box) that makes an image cover `size` with no letterbox bars."""
    W, H = size
    w, h = img_size
    s = max(W / w, H / h)
    nw, nh = max(W, round(w * s)), max(H, round(h * s))
    ox, oy = (nw - W) // 2, (nh - H) // 2
    return (nw, nh), (ox, oy, ox + W, oy + H)


def compose_inset(background: Image.Image, inset: Image.Image, cfg: MiaDpoConfig, corner: Corner,
                  resize: Resize | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """`resize(i, size)` scales image i (0 = background, 1 = inset); the background is scaled to cover the
    canvas and centre-cropped, so a cached scaled background serves every inset drawn on it."""
    resize = resize or _plain_resize([background, inset])
    scaled, box = cover_size(background.size, cfg.canvas_size)
    canvas = resize(0, scaled).crop(box)          # crop copies: the cached scaled image is never drawn on
    outer, inner = inset_geometry(cfg.canvas_size, inset.size, cfg, corner)
    ImageDraw.Draw(canvas).rectangle((outer[0], outer[1], outer[2] - 1, outer[3] - 1), fill=cfg.inset_border_color)
    canvas.paste(resize(1, (inner[2] - inner[0], inner[3] - inner[1])), inner[:2])
    return canvas, inner


# ---------------------------------------------------------------- sample planning (random choices, no pixels)

@dataclass
class Plan:
    row: int
    mode: Mode
    images: list[int]            # indices into the pool, in display order
    target_pos: int              # position of the target in `images`
    rejected_pos: int            # position of the distractor whose answer is the rejected one
    layout: tuple[int, int] | None = None
    corner: Corner | None = None


def _row_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)])


def _similar(a: str, b: str) -> float:
    return SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _neighbours(pos: int, n: int, layout: tuple[int, int] | None) -> list[int]:
    """Positions ordered by how easily they are confused with `pos`: adjacent first."""
    if layout is None:
        return sorted((p for p in range(n) if p != pos), key=lambda p: (abs(p - pos), p))
    _, cols = layout
    r, c = divmod(pos, cols)
    return sorted((p for p in range(n) if p != pos),
                  key=lambda p: (abs(p // cols - r) + abs(p % cols - c), p))


def plan_row(row: int, target: int, answers: list[str], pool_size: int, mode: Mode, cfg: MiaDpoConfig,
             seed: int, key: str) -> Plan | None:
    rng = _row_rng(seed, f"{key}|{mode}")
    others = np.array([i for i in range(pool_size) if i != target])
    if mode == "sequence":
        n = int(rng.integers(cfg.sequence_images[0], cfg.sequence_images[1] + 1))
        layout = None
    elif mode == "grid":
        layout = cfg.grid_layouts[int(rng.integers(len(cfg.grid_layouts)))]
        n = layout[0] * layout[1]
    else:
        n, layout = 2, None
    if len(others) < n - 1:
        return None
    distractors = rng.choice(others, size=n - 1, replace=False).tolist()
    if mode == "pic_in_pic":
        corner = cfg.inset_corner if cfg.inset_corner != "random" else \
            ("top_left", "top_right", "bottom_left", "bottom_right")[int(rng.integers(4))]
        # images = [background distractor, target inset]; the background grounds the rejected answer
        imgs = [distractors[0], target]
        if _similar(answers[distractors[0]], answers[target]) > cfg.max_answer_similarity:
            return None
        return Plan(row, mode, imgs, 1, 0, None, corner)
    pos = int(rng.integers(n))
    imgs = distractors[:pos] + [target] + distractors[pos:]
    for p in _neighbours(pos, n, layout):
        if _similar(answers[imgs[p]], answers[target]) <= cfg.max_answer_similarity:
            return Plan(row, mode, imgs, pos, p, layout)
    return None


# ---------------------------------------------------------------- prompts

_ORDINAL_ROW = {1: ["only"], 2: ["top", "bottom"], 3: ["top", "middle", "bottom"]}
_ORDINAL_COL = {1: ["only"], 2: ["left", "right"], 3: ["left", "middle", "right"]}


def render_prompt(plan: Plan, question: str, cfg: MiaDpoConfig) -> str:
    tok = cfg.image_token
    if plan.mode == "sequence":
        head = "\n".join(f"Image {i + 1}: {tok}" for i in range(len(plan.images)))
        return f"{head}\nAbout image {plan.target_pos + 1}: {question}"
    if plan.mode == "grid":
        rows, cols = plan.layout
        r, c = divmod(plan.target_pos, cols)
        where = f"row {r + 1}, column {c + 1}"
        if rows > 1 and cols > 1:
            where += f", {_ORDINAL_ROW[rows][r]} {_ORDINAL_COL[cols][c]}"
        return (f"{tok}\nThe picture is a {rows}x{cols} grid of images, each labelled with a number. "
                f"About the image labelled {plan.target_pos + 1} ({where}): {question}")
    corner = plan.corner.replace("_", "-")
    return f"{tok}\nA small picture is inset in the {corner} corner of a larger one. About the inset picture: {question}"


# ---------------------------------------------------------------- the step

class _ImageCache:
    """Decoded images and their resized cells, shared by the render threads and bounded by pixel bytes.

    Every source image is decoded once (not once per sample that shows it), and every (image, size) scaling
    is done once: grid cells have one size per image for a given cell size, insets and cover-scaled
    backgrounds one per image for a given canvas, so across a build each is reused by many samples. The
    least recently used entries are evicted past `max_bytes` (memory stays bounded on a large pool; an
    evicted image is decoded again if needed). Two threads may compute the same missing entry at once;
    both results are identical, so the race costs time, never correctness."""

    def __init__(self, store: MediaStore, max_bytes: int = 512 << 20):
        self.store, self.max_bytes = store, max_bytes
        self._d: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._bytes = 0
        self._stored: dict[str, str] = {}
        self._lock = Lock()

    def _lookup(self, key: tuple, make: Callable[[], Image.Image]) -> Image.Image:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        img = make()
        with self._lock:
            if key not in self._d:
                self._d[key] = img
                self._bytes += img.width * img.height * len(img.getbands())
            while self._bytes > self.max_bytes and len(self._d) > 1:
                _, old = self._d.popitem(last=False)
                self._bytes -= old.width * old.height * len(old.getbands())
        return img

    def get(self, uri: str) -> Image.Image:
        return self._lookup((uri,), lambda: load_image(self.store.resolve(uri)))

    def resized(self, uri: str, size: tuple[int, int]) -> Image.Image:
        return self._lookup((uri, size), lambda: self.get(uri).resize(size, Image.Resampling.BILINEAR))

    def stored(self, uri: str) -> str:
        """The source file copied into the media store (hashed once per distinct file)."""
        got = self._stored.get(uri)
        if got is None:
            got = self._stored[uri] = self.store.put_file(self.store.resolve(uri))
        return got


def encode_png(img: Image.Image, compress_level: int) -> bytes:
    """Lossless PNG bytes. zlib level 1 writes a 704×704 collage ~2-3× faster than Pillow's default 6 for
    files ~10% larger; the pixels are identical at every level."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@dataclass
class Planned:
    """What planning decided before any pixel is drawn: the samples, and what happened to every row."""
    plans: list[Plan]
    kept_rows: set[int]
    drops: dict[str, int]
    bad: list[MediaDrop]


def plan_samples(uris: list[str | None], answers: list[str | None], cfg: MiaDpoConfig, seed: int,
                 readable: Callable[[str], str | None], resolve: Callable[[str], object]) -> Planned:
    """Drop unusable rows (accounted), then plan every sample. `readable(uri)` returns None or the decode
    error of that file (each distinct file is checked once); `resolve(uri)` names it in a drop."""
    unreadable = {u: err for u in dict.fromkeys(x for x in uris if x is not None) if (err := readable(u)) is not None}
    drops: dict[str, int] = {}
    bad: list[MediaDrop] = []
    valid_rows = []
    for i, (u, a) in enumerate(zip(uris, answers, strict=True)):
        if u is None or a is None or not str(a).strip():
            drops["missing image or answer"] = drops.get("missing image or answer", 0) + 1
        elif u in unreadable:
            bad.append(MediaDrop(i, cfg.image_column, str(resolve(u)), unreadable[u]))
            drops["unreadable media"] = drops.get("unreadable media", 0) + 1
        else:
            valid_rows.append(i)
    # the pool: one entry per valid row (pool index == position in valid_rows), sorted for determinism
    valid_rows.sort(key=lambda i: (uris[i], answers[i], i))
    pool_answers = [answers[i] for i in valid_rows]
    plans: list[Plan] = []
    kept_rows: set[int] = set()
    for k, i in enumerate(valid_rows):
        modes = cfg.modes if cfg.per_row == "each" else [cfg.modes[i % len(cfg.modes)]]
        made = False
        for m in modes:
            p = plan_row(i, k, pool_answers, len(valid_rows), m, cfg, seed, f"{uris[i]}|{answers[i]}|{i}")
            if p is not None:
                p.images = [valid_rows[j] for j in p.images]   # pool index -> input row
                plans.append(p)
                made = True
        if made:
            kept_rows.add(i)
        else:
            drops["no distinct distractor"] = drops.get("no distinct distractor", 0) + 1
    return Planned(plans, kept_rows, drops, bad)


def build_mia_dpo(frame: pl.LazyFrame, cfg: MiaDpoConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    need = [cfg.image_column, cfg.answer_column] + ([cfg.question_column] if cfg.question_column else [])
    for c in need:
        if c not in df.columns:
            raise SchemaError(f"mia_dpo: input has no column {c!r} (have {df.columns})", column=c)
    img_col = df.get_column(cfg.image_column)
    if isinstance(img_col.dtype, pl.List):
        img_col = img_col.list.first()
    uris = img_col.to_list()
    answers = df.get_column(cfg.answer_column).to_list()
    questions = df.get_column(cfg.question_column).to_list() if cfg.question_column else [cfg.question] * df.height
    store = MediaStore.for_context(ctx)
    cache = _ImageCache(store)
    seed = ctx.seed if cfg.seed is None else cfg.seed

    def readable(u: str) -> str | None:
        try:
            cache.get(u)           # decoded once here; the cache serves every later sample showing it
        except MediaError as e:
            return str(e)
        return None

    # rendering runs in threads: PIL decode, resize, paste and PNG encode release the GIL
    def render(p: Plan) -> dict:
        srcs = [uris[j] for j in p.images]
        boxes: list[list[int]] = []
        if p.mode == "sequence":             # the source files themselves, no pixels touched
            out_uris = [cache.stored(u) for u in srcs]
        else:
            imgs = [cache.get(u) for u in srcs]
            def resize(k: int, size: tuple[int, int]) -> Image.Image:
                return cache.resized(srcs[k], size)
            if p.mode == "grid":
                canvas, bxs = compose_grid(imgs, p.layout[0], p.layout[1], cfg, resize)
                boxes = [list(b) for b in bxs]
            else:
                canvas, inner = compose_inset(imgs[0], imgs[1], cfg, p.corner, resize)
                boxes = [list(inner)]
            out_uris = [store.put_bytes(encode_png(canvas, cfg.png_compress_level), ".png")]
        prompt = render_prompt(p, questions[p.row], cfg)
        chosen, rejected = answers[p.row], answers[p.images[p.rejected_pos]]
        return {
            "prompt_id": _sha(prompt + "\x00" + "\x00".join(out_uris)),
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_id": _sha(chosen), "rejected_id": _sha(rejected),
            "images": out_uris, "mia_mode": p.mode, "target_index": p.target_pos,
            "layout": f"{p.layout[0]}x{p.layout[1]}" if p.layout else p.corner,
            "boxes": boxes, "source_image": uris[p.row], "distractor_image": uris[p.images[p.rejected_pos]],
            "strategy": f"mia_dpo:{p.mode}",
        }

    with ThreadPoolExecutor(cfg.threads) as ex:
        # 1. readability: each distinct file decoded once, in parallel (the decoded image stays cached for
        # rendering); bad files drop their rows and leave the distractor pool
        distinct = list(dict.fromkeys(u for u in uris if u is not None))
        errors = dict(zip(distinct, ex.map(readable, distinct), strict=True))
        # 2. planning: sequential, cheap, deterministic
        planned = plan_samples(uris, answers, cfg, seed, errors.get, store.resolve)
        # 3. rendering
        rows = list(ex.map(render, planned.plans))
    table = _pairs_table(rows)
    validate(table, "pairs")
    counts = {m: sum(r["mia_mode"] == m for r in rows) for m in cfg.modes}
    summary = f"{len(rows)} multi-image pairs (" + ", ".join(f"{m} {n}" for m, n in counts.items()) + ")"
    if planned.bad:
        summary += f" · {drop_summary(planned.bad)}"
    return Built(pl.from_arrow(table).lazy(), "pairs", drops=planned.drops, rows_in=df.height,
                 rows_kept=len(planned.kept_rows),
                 info={"modes": counts, "unreadable": [d.as_dict() for d in planned.bad], "seed": seed},
                 summary=summary)


def _pairs_table(rows: list[dict]) -> pa.Table:
    n = len(rows)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    t = pa.table({
        "prompt_id": pa.array(col("prompt_id"), pa.string()), "prompt": pa.array(col("prompt"), pa.string()),
        "chosen": pa.array(col("chosen"), pa.string()), "rejected": pa.array(col("rejected"), pa.string()),
        "chosen_id": pa.array(col("chosen_id"), pa.string()), "rejected_id": pa.array(col("rejected_id"), pa.string()),
        # no scalar scores: the preference is by construction (gold vs wrong-image answer)
        "score_chosen": pa.nulls(n, pa.float64()), "score_rejected": pa.nulls(n, pa.float64()),
        "margin": pa.nulls(n, pa.float64()), "weight": pa.array([1.0] * n, pa.float64()),
        "stage": pa.array([0] * n, pa.int32()), "strategy": pa.array(col("strategy"), pa.string()),
        "images": pa.array(col("images"), pa.list_(pa.string())),
        "mia_mode": pa.array(col("mia_mode"), pa.string()), "target_index": pa.array(col("target_index"), pa.int32()),
        "layout": pa.array(col("layout"), pa.string()),
        "boxes": pa.array(col("boxes"), pa.list_(pa.list_(pa.int32()))),
        "source_image": pa.array(col("source_image"), pa.string()),
        "distractor_image": pa.array(col("distractor_image"), pa.string()),
    })
    return conform(t, "pairs")
