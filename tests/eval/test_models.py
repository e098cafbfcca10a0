"""training/models.py: every kind of path loads to the weights it names, exactly.

- a GGUF file (written here from a tiny random Llama with the `gguf` package, F32 tensors, q/k permuted as
  llama.cpp stores them): the loaded model's logits equal the original's bit for bit, `save_pretrained` works (the
  transformers GGUF model refuses it), and `prefdata train` trains from it and saves final/;
- a training run, its final/ and its checkpoints/step-N (full weights and LoRA): all give the same logits, and the
  info dict names the run, step, dataset and config hash;
- errors are one line: missing path, run without final/, adapter whose base is missing (naming where it looked),
  a folder without a model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from prefdata.errors import PrefdataError

DATA = Path(__file__).resolve().parents[1] / "data" / "training" / "hh_pairs.parquet"
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def write_llama_gguf(lm, tok, path: Path) -> Path:
    """A Llama + byte-level BPE tokenizer as a GGUF file (F32), in llama.cpp's layout: q/k rows permuted per head
    (transformers un-permutes them when loading), gpt2 tokenizer with its merges, special tokens marked control."""
    import gguf

    cfg = lm.config

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in set(tok.all_special_ids) else 1 for i in range(len(tokens))])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(True)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, v in lm.state_dict().items():
        a = v.float().numpy()
        if k in top:
            name = top[k]
        else:
            layer, part = int(k.split(".")[2]), ".".join(k.split(".")[3:-1])
            name = f"blk.{layer}.{block[part]}.weight"
            if part == "self_attn.q_proj":
                a = permute(a, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                a = permute(a, cfg.num_key_value_heads)
        w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder, the same model as a GGUF file, and a small pairs file."""
    from training.tiny import make_tiny_model, texts_of_table

    root = tmp_path_factory.mktemp("models")
    pairs = pq.read_table(DATA)
    make_tiny_model(root / "base", texts_of_table(pairs), vocab_size=400, seed=0, **SHAPE)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    lm = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(root / "base")
    (root / "gguf").mkdir()
    write_llama_gguf(lm, tok, root / "gguf" / "tiny.gguf")
    lens = [len(p) for p in pairs.column("prompt").to_pylist()]
    pq.write_table(pairs.take(sorted(range(len(lens)), key=lens.__getitem__)[:8]), root / "pairs.parquet")
    return root


def logits(lm, ids=(1, 40, 41, 42, 43, 44)) -> torch.Tensor:
    with torch.no_grad():
        return lm(torch.tensor([list(ids)])).logits


def train(root: Path, name: str, **extra) -> dict:
    from training.run import train_from_recipe
    recipe = {"model": str(root / "base"), "dataset": str(root / "pairs.parquet"),
              "loss": {"name": "dpo_sigmoid", "beta": 0.1}, "output_dir": str(root / name),
              "train": {"batch_size": 4, "max_length": 96, "lr": 0.05, "max_steps": 2, "warmup_ratio": 0.0},
              **extra}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    return train_from_recipe(root / f"{name}.yaml")


def test_gguf_loads_exactly_into_a_model_that_saves(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.models import load_causal_lm
    ref = AutoModelForCausalLM.from_pretrained(setup / "base", dtype=torch.float32)
    lm, tok, info = load_causal_lm(str(setup / "gguf" / "tiny.gguf"))
    assert info["kind"] == "gguf" and info["path"] == str(setup / "gguf" / "tiny.gguf") and info["run_dir"] is None
    assert torch.equal(logits(lm), logits(ref))
    assert "quantization_config" not in lm.config.to_dict()
    text = "The quick brown fox"
    assert tok(text)["input_ids"] == AutoTokenizer.from_pretrained(setup / "base")(text)["input_ids"]
    # what transformers' own GGUF model refuses
    raw = AutoModelForCausalLM.from_pretrained(setup / "gguf", gguf_file="tiny.gguf", dtype=torch.float32)
    with pytest.raises(ValueError, match="not serializable"):
        raw.save_pretrained(tmp_path / "raw")
    lm.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again, _, info2 = load_causal_lm(str(tmp_path / "saved"))
    assert info2["kind"] == "hf" and torch.equal(logits(again), logits(ref))
    # the same file named by folder + gguf_file
    lm3, _, info3 = load_causal_lm(str(setup / "gguf"), gguf_file="tiny.gguf")
    assert info3["kind"] == "gguf" and torch.equal(logits(lm3), logits(ref))


def test_train_from_gguf_full_and_lora(setup):
    """`prefdata train` on a GGUF model (model: folder + gguf_file): final/ saves, and a LoRA run's adapter finds
    its GGUF base through the run's record."""
    from training.models import load_causal_lm
    res = train(setup, "gguf-run", model=str(setup / "gguf"), gguf_file="tiny.gguf",
                reference={"model": str(setup / "gguf" / "tiny.gguf")})
    assert abs(res["last"]["loss"] - np.log(2)) > 1e-6            # step 2 moved away from the reference
    lm, _, info = load_causal_lm(str(setup / "gguf-run"))
    assert info["kind"] == "run" and info["base_model"] == str(setup / "gguf")
    assert info["base_gguf_file"] == "tiny.gguf" and info["step"] == 2
    base, _, _ = load_causal_lm(str(setup / "base"))
    assert not torch.equal(logits(lm), logits(base))
    train(setup, "gguf-lora", model=str(setup / "gguf"), gguf_file="tiny.gguf", lora={"r": 4},
          reference={"model": str(setup / "gguf" / "tiny.gguf")})
    adapter = json.loads((setup / "gguf-lora" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(setup / "gguf" / "tiny.gguf")   # the file, not its folder
    final, _, fi = load_causal_lm(str(setup / "gguf-lora" / "final"))
    step, _, si = load_causal_lm(str(setup / "gguf-lora" / "checkpoints" / "step-000002"))
    assert fi["kind"] == si["kind"] == "lora" and torch.equal(logits(final), logits(step))
    assert not torch.equal(logits(final), logits(base))


def test_run_final_and_checkpoints_agree(setup):
    from training.checkpointing import checkpoint_dirs
    from training.models import load_causal_lm, locate_model
    train(setup, "full", reference={"model": str(setup / "base")})
    train(setup, "lora", reference={"model": str(setup / "base")}, lora={"r": 4})
    base, _, _ = load_causal_lm(str(setup / "base"))
    for run, kind in (("full", "run"), ("lora", "lora")):
        state = json.loads((checkpoint_dirs(setup / run)[-1] / "trainer_state.json").read_text())
        out = {}
        for where in (run, f"{run}/final", f"{run}/checkpoints/step-000002"):
            lm, tok, info = load_causal_lm(str(setup / where))
            out[where] = logits(lm)
            assert info == {"path": str(setup / where), "kind": kind, "base_model": str(setup / "base"),
                            "base_gguf_file": None, "run_dir": str(setup / run), "step": 2,
                            "dataset": str(setup / "pairs.parquet"), "config_sha256": state["config_sha256"]}
            assert tok.pad_token is not None
        assert torch.equal(out[run], out[f"{run}/final"]) and torch.equal(out[run], out[f"{run}/checkpoints/step-000002"])
        assert not torch.equal(out[run], logits(base))
    # locating reads no weights: a step checkpoint's source names its base
    src = locate_model(str(setup / "lora" / "checkpoints" / "step-000002"))
    assert src.load == "state" and src.base.location == setup / "base" and src.lora["r"] == 4


def test_errors_are_one_line(setup, tmp_path):
    import shutil

    from training.models import load_causal_lm, locate_model

    def error(path, **kw) -> str:
        with pytest.raises(PrefdataError) as e:
            locate_model(str(path), **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(tmp_path / "nope") == f"model path {str(tmp_path / 'nope')!r} does not exist (looked at {tmp_path / 'nope'})"
    assert error(setup / "gguf", gguf_file="other.gguf") == f"GGUF file 'other.gguf' not found in {setup / 'gguf'}"
    (tmp_path / "empty").mkdir()
    assert "holds no model" in error(tmp_path / "empty")
    # a run killed before its final/ was written
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text("")
    assert "has no final/ (training did not finish)" in error(unfinished)
    # an adapter whose base model folder is gone; a copied checkpoint whose run's starting model is gone
    shutil.copytree(setup / "lora" / "final", tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "gone")}))
    assert error(tmp_path / "adapter") == (f"LoRA adapter {tmp_path / 'adapter'}: its base model "
                                           f"{str(tmp_path / 'gone')!r} is missing (looked at {tmp_path / 'gone'})")
    run = tmp_path / "run"
    shutil.copytree(setup / "full", run)
    for ck in (run / "checkpoints").iterdir():
        st = json.loads((ck / "trainer_state.json").read_text())
        (ck / "trainer_state.json").write_text(json.dumps({**st, "recipe": {**st["recipe"], "model": "gone/x"}}))
    assert "its base model 'gone/x' is missing" in error(run / "checkpoints" / "step-000002")
    (run / "checkpoints" / "step-000002" / "model.safetensors").unlink()
    assert "has no model.safetensors" in error(run / "checkpoints" / "step-000002")
    with pytest.raises(PrefdataError, match="cannot load"):
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "config.json").write_text("{not json")
        load_causal_lm(str(tmp_path / "broken"), tokenizer=str(setup / "base"))
