"""`get_peft_model` without transformers' FutureWarning "`is_gradient_checkpointing` is deprecated": peft reads
that property itself (peft_model.py), so the warning is about peft's code, not a recipe, and only clutters the
training output. Everything else peft or transformers warns about still shows."""
from __future__ import annotations

import warnings


def get_peft_model(model, config):
    import peft

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        return peft.get_peft_model(model, config)
