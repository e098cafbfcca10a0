"""Recipe step name -> (module, config class, function). One line per step; modules are imported
only when a recipe uses the step, so a recipe of polars steps never imports torch."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from prefdata.errors import RecipeError


@dataclass(frozen=True)
class StepSpec:
    module: str
    config: str
    fn: str
    inputs: tuple[str, ...]          # table kinds the step accepts

    def load(self):
        from prefdata.extras import needs_train

        with needs_train(f"step module {self.module}"):   # the video steps' module imports torch
            mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.fn)


STEPS: dict[str, StepSpec] = {
    "dedup": StepSpec("builders.filter", "DedupConfig", "build_dedup", ("responses",)),
    "filter": StepSpec("builders.filter", "FilterConfig", "build_filter", ("responses", "pairs")),
    "rank": StepSpec("builders.rank", "RankConfig", "build_rank", ("responses",)),
    "pairs": StepSpec("builders.pairs", "PairsConfig", "build_pairs", ("responses",)),
    "lists": StepSpec("builders.lists", "ListsConfig", "build_lists", ("responses",)),
    "curriculum": StepSpec("builders.curriculum", "CurriculumConfig", "build_curriculum", ("pairs",)),
    "media": StepSpec("builders.media", "MediaConfig", "build_media", ("responses", "pairs", "lists")),
    "mia_dpo": StepSpec("builders.images", "MiaDpoConfig", "build_mia_dpo", ("responses",)),
    "dcpo": StepSpec("builders.captions", "DcpoConfig", "build_dcpo", ("responses", "pairs")),
    "video_augment": StepSpec("builders.video", "VideoAugmentConfig", "build_video_augment", ("responses",)),
    "dense_segments": StepSpec("builders.video", "DenseSegmentsConfig", "build_dense_segments", ("pairs",)),
    "generate": StepSpec("builders.generate", "GenerateConfig", "build_generate", ("prompts", "responses")),
    "score": StepSpec("builders.score", "ScoreConfig", "build_score", ("responses",)),
    "ensemble": StepSpec("builders.ensemble", "EnsembleConfig", "build_ensemble", ("responses",)),
    "codedpo": StepSpec("builders.codedpo", "CodeDPOConfig", "build_codedpo", ("responses",)),
    "split": StepSpec("builders.split", "SplitConfig", "build_split", ("prompts", "responses", "pairs", "lists")),
    "near_dedup": StepSpec("builders.near_dedup", "NearDedupConfig", "build_near_dedup",
                           ("prompts", "responses", "pairs", "lists")),
    "decontaminate": StepSpec("builders.decontaminate", "DecontaminateConfig", "build_decontaminate",
                              ("prompts", "responses", "pairs", "lists")),
}


def step_spec(name: str, *, path: str = "steps") -> StepSpec:
    try:
        return STEPS[name]
    except KeyError:
        raise RecipeError(f"unknown step {name!r}; known steps: {', '.join(sorted(STEPS))}", path=path) from None
