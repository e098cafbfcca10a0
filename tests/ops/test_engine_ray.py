"""engine="ray": the default build on a local Ray instance gives the same rows, in the same order (same
content hash), and the same row accounting as the single-node engine."""
from __future__ import annotations

import polars as pl
import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    from prefdata.engine_ray import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_default_build_on_ray_equals_local(local_ray, built_catalog, tmp_path):
    from catalog import Catalog
    from prefdata.build import run_recipe

    _, local = built_catalog
    res = run_recipe(None, Catalog.open(tmp_path / "cat"), engine="ray", progress=False)
    assert res.content_hash == local.content_hash and res.rows == local.rows
    for a, b in zip(res.steps, local.steps, strict=True):
        assert (a.step, a.rows_in, a.rows_kept, a.drops, a.rows_out) == (b.step, b.rows_in, b.rows_kept, b.drops,
                                                                         b.rows_out)
    assert res.steps[0].info["engine"] == "ray" and res.steps[0].info["partitions"] >= 2
    assert res.steps[1].info["pairs"] == local.steps[1].info["pairs"]
    assert res.steps[1].info["margin_mean"] == pytest.approx(local.steps[1].info["margin_mean"])
    assert "driver" in res.steps[2].info["engine"]        # curriculum quantiles need the whole table


def test_lists_step_on_interleaved_input(local_ray, built_catalog):
    from builders.base import StepContext
    from builders.registry import STEPS
    from prefdata.engine_ray import run_step

    cat, res = built_catalog
    frame = cat.scan(res.inputs[0].split("@")[0]).filter(pl.col("score").is_not_null())
    cfg_cls, fn = STEPS["lists"].load()
    cfg, ctx = cfg_cls(k=4), StepContext(progress=False)
    # rows of a prompt scattered through the input: same rows and accounting, flagged as possibly reordered
    shuffled = frame.collect().sample(fraction=1.0, shuffle=True, seed=1).lazy()
    local = fn(shuffled, cfg, ctx)
    on_ray = run_step("lists", fn, shuffled, cfg, ctx, num_partitions=3)
    assert on_ray.info["input_prompts_contiguous"] is False and on_ray.info["partitions"] == 3
    assert on_ray.drops == local.drops and on_ray.rows_kept == local.rows_kept
    assert on_ray.frame.collect().sort("prompt_id").equals(local.frame.collect().sort("prompt_id"))
