"""Chat templates in the text trainer: rendering and tokenization (TRL's rules), the auto/true/false choice per row,
errors, and the reference identity carrying the template."""
from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from prefdata.errors import RecipeError, SchemaError
from training.data import DataOptions, build_train_data
from training.encode import chat_texts, encode_groups
from training.reference import reference_identity

# ChatML-like, with the tokenizer's own <s>/</s> as start/end of turn (so BOS doubling would be visible)
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
MSGS = [{"role": "user", "content": "Can you help me with a pen prank?"}]


@pytest.fixture()
def chat_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_prompt_and_response_rendered_as_turns(chat_tok):
    p, fulls = chat_texts(chat_tok, MSGS, ["Sure, here is one.", "No."])
    assert p == "<s>user\nCan you help me with a pen prank?</s>\n<s>assistant\n"
    assert fulls[0] == p + "Sure, here is one.</s>\n"
    g = encode_groups(chat_tok, [MSGS], [["Sure, here is one.", "No."]], max_length=128, chat=[True]).groups[0]
    # tokenized without special tokens: the template's <s> is the only BOS; the end-of-turn is the only </s>
    assert g.prompt_ids == chat_tok(p, add_special_tokens=False)["input_ids"]
    assert g.prompt_ids.count(chat_tok.bos_token_id) == 2 and g.prompt_ids[0] == chat_tok.bos_token_id
    assert chat_tok.decode(g.response_ids[0]) == "Sure, here is one.</s>\n"
    assert g.response_ids[0].count(chat_tok.eos_token_id) == 1
    # a plain row in the same call keeps the old encoding (tokenizer BOS + eos appended)
    plain = encode_groups(chat_tok, ["Hi", MSGS], [["Yo"], ["No."]], max_length=128, chat=[False, True]).groups
    assert plain[0].prompt_ids == chat_tok("Hi")["input_ids"] and plain[0].prompt_ids[0] == chat_tok.bos_token_id
    assert chat_tok.decode(plain[0].response_ids[0]) == "Yo</s>"
    assert plain[1].prompt_ids == g.prompt_ids


def test_matches_trl_apply_chat_template(chat_tok):
    from trl.data_utils import apply_chat_template

    trl = apply_chat_template({"prompt": MSGS, "chosen": [{"role": "assistant", "content": "Sure."}],
                               "rejected": [{"role": "assistant", "content": "No."}]}, chat_tok)
    p, fulls = chat_texts(chat_tok, MSGS, ["Sure.", "No."])
    assert (p, fulls) == (trl["prompt"], [trl["prompt"] + trl["chosen"], trl["prompt"] + trl["rejected"]])


def _pairs(with_messages: bool) -> pa.Table:
    msgs = [MSGS, None, [{"role": "user", "content": "What is a joke?"}]] if with_messages else None
    t = pa.table({"prompt": ["\n\nHuman: pen prank?\n\nAssistant:", "plain prompt", "\n\nHuman: joke?\n\nAssistant:"],
                  "chosen": [" Sure.", " Yes.", " A pun."], "rejected": [" No.", " Nope.", " Never."]})
    if with_messages:
        t = t.append_column("messages", pa.array(msgs, pa.list_(pa.struct([("role", pa.string()),
                                                                          ("content", pa.string())]))))
    return t


def test_auto_true_false_per_row(chat_tok, tokenizer):
    t = _pairs(True)
    auto = build_train_data(t, chat_tok, max_length=128)   # default: auto
    assert auto.info["chat_template_rows"] == 2            # the rows with messages; the plain row stays plain
    assert chat_tok.decode(auto.groups[0].prompt_ids).startswith("<s>user\nCan you help")
    assert chat_tok.decode(auto.groups[1].prompt_ids) == "<s>plain prompt"
    every = build_train_data(t, chat_tok, max_length=128, options=DataOptions(chat_template=True))
    assert every.info["chat_template_rows"] == 3
    assert chat_tok.decode(every.groups[1].prompt_ids) == "<s>user\nplain prompt</s>\n<s>assistant\n"
    off = build_train_data(t, chat_tok, max_length=128, options=DataOptions(chat_template=False))
    assert off.info["chat_template_rows"] == 0
    assert [g.prompt_ids for g in off.groups] == [g.prompt_ids for g in build_train_data(t, tokenizer,
                                                                                         max_length=128).groups]
    # true on a tokenizer without a template: a load-time error naming the recipe key
    with pytest.raises(RecipeError) as e:
        build_train_data(t, tokenizer, max_length=128, options=DataOptions(chat_template=True))
    assert e.value.path == "chat_template" and "no chat template" in str(e.value)
    # conversational TRL rows (list-valued prompt) that no template renders: an error, not a str() of the list
    conv = pa.table({"prompt": [MSGS, MSGS], "completion": ["Sure.", "No."], "label": [True, False]})
    with pytest.raises(SchemaError) as e:
        build_train_data(conv, tokenizer, max_length=128, options=DataOptions(unpaired=True))
    assert e.value.column == "prompt" and e.value.row == 0
    d = build_train_data(conv, chat_tok, max_length=128, options=DataOptions(unpaired=True))
    assert d.info["chat_template_rows"] == 2 and chat_tok.decode(d.groups[0].response_ids[0]) == "Sure.</s>\n"
    assert chat_tok.decode(d.kl_groups[0].response_ids[0]) == "No.</s>\n"   # its KL sample: the other completion


def test_reference_identity_carries_the_template(chat_tok, tokenizer):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1)
    plain = reference_identity("m", cfg, tokenizer, 128, False)
    assert "chat_template" not in plain   # unchanged for tokenizers without a template (stored passes stay valid)
    assert reference_identity("m", cfg, tokenizer, 128, False, DataOptions()) == plain
    auto = reference_identity("m", cfg, chat_tok, 128, False)
    off = reference_identity("m", cfg, chat_tok, 128, False, DataOptions(chat_template=False))
    other = copy.deepcopy(chat_tok)
    other.chat_template = TEMPLATE.replace("\n", " ")
    keys = {auto["key"], off["key"], reference_identity("m", cfg, other, 128, False)["key"],
            reference_identity("m", cfg, chat_tok, 128, False, DataOptions(chat_template=True))["key"]}
    assert len(keys) == 4 and auto["chat_template"]["mode"] == "auto"
