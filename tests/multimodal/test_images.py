"""MIA-DPO: exact collage / inset geometry (pixel positions), determinism, distractor-grounded rejections."""
from __future__ import annotations

import polars as pl
import pytest
from PIL import Image

from builders.images import MiaDpoConfig, build_mia_dpo, compose_grid, compose_inset, grid_geometry, inset_geometry
from builders.media import MediaStore, load_image

COLORS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200),
          (90, 90, 90), (250, 120, 0), (120, 0, 250)]


def solid(color, size=(40, 30)):
    return Image.new("RGB", size, color)


@pytest.mark.parametrize("layout", [(1, 2), (2, 2), (2, 3), (3, 3)])
def test_grid_cells_margins_and_labels_at_exact_pixels(layout):
    rows, cols = layout
    cfg = MiaDpoConfig(cell_size=(40, 30), margin=5, label_box=10, background=(255, 255, 255))
    imgs = [solid(COLORS[i]) for i in range(rows * cols)]
    canvas, boxes = compose_grid(imgs, rows, cols, cfg)
    assert canvas.size == (cols * 40 + (cols + 1) * 5, rows * 30 + (rows + 1) * 5)
    px = canvas.load()
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        r, c = divmod(k, cols)
        assert (x0, y0) == (5 + c * 45, 5 + r * 35) and (x1 - x0, y1 - y0) == (40, 30)
        assert px[x1 - 1, y1 - 1] == COLORS[k]          # bottom-right corner of the cell: the image
        assert px[x0 + 10, y0 + 10] == COLORS[k]        # just past the label box: the image
        assert px[x0, y0] == (0, 0, 0)                  # label box top-left corner
        assert px[x0 + 9, y0 + 9] == (0, 0, 0)          # label box bottom-right corner (10 px box)
        assert px[x0 - 1, y0] == (255, 255, 255)        # margin left of the cell
        assert px[x1, y1 - 1] == (255, 255, 255)        # margin right of the cell


def test_grid_letterboxes_other_aspect_ratios():
    cfg = MiaDpoConfig(cell_size=(40, 40), margin=4, labels=False)
    canvas, boxes = compose_grid([solid(COLORS[0], (80, 40)), solid(COLORS[1], (20, 40))], 1, 2, cfg)
    px = canvas.load()
    x0, y0, _, _ = boxes[0]          # 80×40 → 40×20, centred vertically: rows 10..29 of the cell
    assert px[x0, y0 + 9] == (255, 255, 255) and px[x0, y0 + 10] == COLORS[0] and px[x0, y0 + 29] == COLORS[0]
    assert px[x0, y0 + 30] == (255, 255, 255)
    x0, y0, _, _ = boxes[1]          # 20×40 → 20×40, centred horizontally: columns 10..29
    assert px[x0 + 9, y0] == (255, 255, 255) and px[x0 + 10, y0] == COLORS[1] and px[x0 + 29, y0] == COLORS[1]


@pytest.mark.parametrize("corner", ["top_left", "top_right", "bottom_left", "bottom_right"])
def test_inset_box_border_and_background_at_exact_pixels(corner):
    cfg = MiaDpoConfig(canvas_size=(200, 100), inset_scale=0.3, inset_margin=6, inset_border=2,
                       inset_border_color=(255, 255, 255))
    bg, fg = solid((10, 20, 30), (400, 200)), solid((240, 10, 10), (56, 26))
    canvas, inner = compose_inset(bg, fg, cfg, corner)
    outer, inner2 = inset_geometry((200, 100), fg.size, cfg, corner)
    assert inner == inner2
    # box 60×30, minus border 2 → 56×26 (exact fit of a 56×26 inset); outer box 60×30 at 6 px from the corner
    assert (outer[2] - outer[0], outer[3] - outer[1]) == (60, 30)
    exp_x = 6 if corner.endswith("left") else 200 - 6 - 60
    exp_y = 6 if corner.startswith("top") else 100 - 6 - 30
    assert outer[:2] == (exp_x, exp_y) and inner == (exp_x + 2, exp_y + 2, exp_x + 58, exp_y + 28)
    px = canvas.load()
    assert px[inner[0], inner[1]] == (240, 10, 10) and px[inner[2] - 1, inner[3] - 1] == (240, 10, 10)
    assert px[outer[0], outer[1]] == (255, 255, 255) and px[outer[2] - 1, outer[3] - 1] == (255, 255, 255)
    assert px[outer[0] - 1, outer[1]] == (10, 20, 30)    # just outside the border: background
    assert px[100, 50] == (10, 20, 30)                   # canvas centre is background


def _frame(captions):
    return captions.select(image=pl.col("file"), response=pl.col("caption_short"))


def test_build_is_deterministic_and_grounds_rejections_in_distractors(ctx, captions):
    cfg = MiaDpoConfig(question_column=None, per_row="each", cell_size=(64, 64), canvas_size=(128, 128))
    a = build_mia_dpo(_frame(captions).lazy(), cfg, ctx)
    b = build_mia_dpo(_frame(captions).lazy(), cfg, ctx)
    ta, tb = a.frame.collect(), b.frame.collect()
    assert ta.equals(tb)                                   # same seed → same pairs, same collage bytes
    assert a.rows_in == 12 and a.rows_kept == 12 and not a.drops and ta.height == 36
    assert a.info["modes"] == {"sequence": 12, "grid": 12, "pic_in_pic": 12}
    answer_of = dict(zip(captions["file"], captions["caption_short"], strict=True))
    store = MediaStore.for_context(ctx)
    for r in ta.iter_rows(named=True):
        assert r["chosen"] == answer_of[r["source_image"]]
        assert r["rejected"] == answer_of[r["distractor_image"]] != r["chosen"]
        assert r["prompt"].count("<image>") == len(r["images"])
        assert all(store.resolve(u).is_file() for u in r["images"])
        if r["mia_mode"] == "sequence":
            assert 2 <= len(r["images"]) <= 5 and f"About image {r['target_index'] + 1}:" in r["prompt"]
            assert f"Image {len(r['images'])}: <image>" in r["prompt"]
        if r["mia_mode"] == "grid":
            rows, cols = map(int, r["layout"].split("x"))
            img = load_image(store.resolve(r["images"][0]))
            assert img.size == grid_geometry(rows, cols, (64, 64), cfg.margin)[0]
            assert f"labelled {r['target_index'] + 1}" in r["prompt"]
    other = build_mia_dpo(_frame(captions).lazy(), cfg.model_copy(update={"seed": 123}), ctx).frame.collect()
    assert not other.equals(ta)


def test_unreadable_image_is_dropped_and_named(ctx, captions, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    df = pl.concat([_frame(captions), pl.DataFrame({"image": [str(bad)], "response": ["A corrupt picture."]})])
    built = build_mia_dpo(df.lazy(), MiaDpoConfig(question_column=None, modes=["sequence"]), ctx)
    assert built.drops == {"unreadable media": 1} and built.rows_kept == 12
    assert built.info["unreadable"][0]["file"] == str(bad) and "corrupt.jpg" in built.summary
    out = built.frame.collect()
    assert str(bad) not in out["distractor_image"].to_list()   # never used as a distractor either


def test_too_similar_distractor_answers_are_skipped(ctx, captions):
    # every image gets the same answer: no distractor can ground a different (rejected) answer
    df = _frame(captions).with_columns(response=pl.lit("A photo."))
    built = build_mia_dpo(df.lazy(), MiaDpoConfig(question_column=None, modes=["grid"]), ctx)
    assert built.frame.collect().height == 0 and built.drops == {"no distinct distractor": 12}


def test_cached_cells_threads_and_png_level_leave_pixels_unchanged(ctx, captions):
    """The build decodes each source once, reuses resized cells across samples, renders in threads and
    writes PNG at zlib level 1: every collage must equal, pixel for pixel, a plain compose of freshly decoded
    sources (what a per-sample script draws), and the zlib level must change only the file size."""
    from builders.images import plan_samples
    cfg = MiaDpoConfig(question_column=None, per_row="each", modes=["grid", "pic_in_pic"], cell_size=(48, 40),
                       canvas_size=(96, 80), threads=3)
    df = _frame(captions)
    fast = build_mia_dpo(df.lazy(), cfg, ctx).frame.collect()
    small = build_mia_dpo(df.lazy(), cfg.model_copy(update={"png_compress_level": 9}), ctx).frame.collect()
    store = MediaStore.for_context(ctx)
    uris, answers = df["image"].to_list(), df["response"].to_list()
    plans = plan_samples(uris, answers, cfg, ctx.seed, lambda u: None, store.resolve).plans
    assert len(plans) == fast.height == small.height == 24
    size = lambda rows: sum(store.resolve(r[0]).stat().st_size for r in rows)  # noqa: E731
    assert size(small["images"]) < size(fast["images"])
    decoded = {u: load_image(store.resolve(u)) for u in set(uris)}
    for p, a, b in zip(plans, fast["images"], small["images"], strict=True):
        imgs = [decoded[uris[j]] for j in p.images]
        ref = compose_grid(imgs, *p.layout, cfg)[0] if p.mode == "grid" else \
            compose_inset(imgs[0], imgs[1], cfg, p.corner)[0]
        assert load_image(store.resolve(a[0])).tobytes() == ref.tobytes()
        assert load_image(store.resolve(b[0])).tobytes() == ref.tobytes()


def test_image_cache_stays_within_its_byte_budget(ctx, captions):
    from builders.images import _ImageCache
    store = MediaStore.for_context(ctx)
    files = captions["file"].to_list()
    cache = _ImageCache(store, max_bytes=3 * 512 * 512 * 3)      # about three decoded 512×512 sources
    for u in files:
        cache.get(u)
        cache.resized(u, (32, 24))
        assert cache._bytes <= cache.max_bytes
    assert 0 < len(cache._d) < 2 * len(files)                     # older entries were evicted
    again = cache.get(files[0])                                   # evicted: decoded again, same pixels
    assert again.tobytes() == load_image(store.resolve(files[0])).tobytes()
    assert cache.resized(files[0], (32, 24)).size == (32, 24)
