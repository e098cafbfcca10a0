"""Every named format on small inputs, with the exact rows expected; the bundled real files in full."""
import hashlib
import json

import pyarrow.compute as pc
from ingest_kit import ARENA, DATA, EXAMPLES, HH, arena_row

from prefdata.ingest import read_source
from prefdata.ingest.ids import normalize_prompt, prompt_id, response_id
from prefdata.schema import validate


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_prompt_normalization_is_nfc_and_whitespace_collapsed():
    assert normalize_prompt("  Caf\u0065\u0301\u00a0 au\tlait\n") == "Caf\u00e9 au lait"
    assert prompt_id("Hello   world ") == prompt_id("Hello world") == _sha("Hello world")
    assert prompt_id("Hello world") != prompt_id("hello world")
    pid = prompt_id("Hello world")
    assert response_id(pid, "Hi") == _sha(pid + "Hi")


def test_arena_full_file():
    res = read_source(ARENA)
    t = res.table
    assert (res.format, res.kind, res.rows_in, res.rows_kept, res.drops) == ("arena", "responses", 1400, 1400, {})
    assert t["score"].null_count == 10
    assert pc.count_distinct(t["prompt_id"]).as_py() == 200
    first = json.loads(ARENA.open().readline())
    row = t.slice(0, 1).to_pylist()[0]
    c0 = first["completions"][0]
    assert row["prompt_id"] == first["question_id"] and row["prompt"] == first["prompt"]
    assert (row["response_id"], row["response"], row["model"]) == (c0["answer_id"], c0["response"], c0["model"])
    assert row["score"] == c0["score"] == row["scores"]["gpt4_judge"] and row["judgment"] == c0["judgment"]
    validate(t, "responses")


def test_arena_small_exact(jsonl):
    path = jsonl([arena_row("q1", "Say hi", [("m1", "a1", "Hi", 7), ("m2", "a2", "Hello!", None)])])
    rows = read_source(path, format="arena").table.to_pylist()
    assert [(r["prompt_id"], r["response_id"], r["response"], r["model"], r["score"], r["scores"]) for r in rows] == [
        ("q1", "a1", "Hi", "m1", 7.0, {"gpt4_judge": 7.0}), ("q1", "a2", "Hello!", "m2", None, {"gpt4_judge": None})]


def test_hh_two_turn_prefix_split_exact(jsonl):
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    path = jsonl([{"chosen": prefix + " Why did the chicken cross the road?", "rejected": prefix + " No."}])
    res = read_source(path)
    assert res.format == "hh-rlhf" and res.kind == "pairs"
    (row,) = res.table.to_pylist()
    pid = _sha(normalize_prompt(prefix))
    assert row == {
        "prompt": prefix,
        "messages": [{"role": "user", "content": "Hi there"},
                     {"role": "assistant", "content": "Hello! How can I help?"},
                     {"role": "user", "content": "Tell me a joke."}],
        "chosen": " Why did the chicken cross the road?", "rejected": " No.",
        "prompt_id": pid, "chosen_id": _sha(pid + " Why did the chicken cross the road?"),
        "rejected_id": _sha(pid + " No."), "score_chosen": None, "score_rejected": None, "margin": None,
        "weight": 1.0, "stage": 0, "strategy": "human"}


def test_hh_split_never_cuts_inside_a_shared_word(jsonl):
    # the final turns share the characters " Sure" - the prompt still ends at the turn boundary
    p = "\n\nHuman: Can you help?\n\nAssistant:"
    (row,) = read_source(jsonl([{"chosen": p + " Sure, here it is.", "rejected": p + " Sure not."}])).table.to_pylist()
    assert (row["prompt"], row["chosen"], row["rejected"]) == (p, " Sure, here it is.", " Sure not.")


def test_hh_full_file_reproduces_source_text():
    res = read_source(HH, format="hh-rlhf")
    assert (res.rows_in, res.rows_kept, res.drops) == (1000, 1000, {})
    rows = res.table.select(["prompt", "chosen", "rejected"]).to_pylist()
    with HH.open() as f:
        src = [json.loads(line) for line in f]
    assert all(r["prompt"] + r["chosen"] == s["chosen"] and r["prompt"] + r["rejected"] == s["rejected"]
               for r, s in zip(rows, src, strict=True))
    assert all(r["prompt"].endswith("\n\nAssistant:") for r in rows)


def test_ultrafeedback_exact():
    res = read_source(DATA / "ultrafeedback_sample.jsonl")
    assert (res.format, res.rows_in, res.rows_kept, res.drops) == ("ultrafeedback", 5, 5, {})
    assert res.info["na_ratings"] == {"helpfulness": 0, "honesty": 1, "instruction_following": 0, "truthfulness": 0}
    got = [(r["prompt"], r["model"], r["score"], r["scores"]) for r in res.table.to_pylist()]
    asp = ("helpfulness", "honesty", "instruction_following", "truthfulness")

    def scores(*values):
        return dict(zip(asp, values, strict=True))

    assert got == [
        ("Name three primary colors.", "alpaca-7b", 4.0, scores(2.0, 2.0, 3.0, 1.0)),
        ("Name three primary colors.", "gpt-4", 9.0, scores(5.0, 5.0, 5.0, 5.0)),
        ("Name three primary colors.", "llama-2-7b-chat", 7.5, scores(4.0, None, 5.0, 5.0)),
        ("Translate 'bonjour' to English.", "starchat", 8.0, scores(5.0, 5.0, 5.0, 5.0)),
        ("Translate 'bonjour' to English.", "wizardlm-13b", 2.5, scores(1.0, 2.0, 2.0, 1.0))]
    assert res.table["fine_grained_score"].to_pylist()[2] == 4.667


def test_nectar_exact():
    res = read_source(DATA / "nectar_sample.jsonl")
    assert (res.format, res.rows_kept, res.drops) == ("nectar", 5, {})
    rows = res.table.to_pylist()
    assert [(r["response"], r["rank"], r["score"]) for r in rows] == [
        ("The capital of France is Paris.", 1, None), ("Paris.", 2, None), ("I think it is Lyon.", 3, None),
        ("Why did the scarecrow win an award? He was outstanding in his field.", 1, None), ("No.", 2, None)]
    assert rows[3]["messages"] == [{"role": "user", "content": "Hi!"},
                                   {"role": "assistant", "content": "Hello! How can I help?"},
                                   {"role": "user", "content": "Tell me a short joke."}]
    assert res.table.schema.field("rank").type == "int32"


def test_helpsteer2_exact():
    res = read_source(DATA / "helpsteer2_sample.jsonl")
    assert (res.format, res.rows_kept, res.drops) == ("helpsteer2", 4, {})
    rows = res.table.to_pylist()
    assert rows[3]["response"] == "It is 124." and rows[3]["score"] is None
    assert rows[3]["scores"] == {"helpfulness": 0.0, "correctness": 0.0, "coherence": 3.0, "complexity": 0.0,
                                 "verbosity": 0.0}
    assert rows[0]["prompt_id"] == rows[1]["prompt_id"] != rows[2]["prompt_id"]


def test_pick_a_pic_bytes_to_media(tmp_path):
    res = read_source(DATA / "pick_a_pic_sample.parquet", media_dir=tmp_path)
    assert (res.format, res.kind, res.rows_in, res.rows_kept, res.drops) == (
        "pick-a-pic", "pairs", 3, 2, {"tie (label 0.5)": 1})
    rows = res.table.to_pylist()
    images = EXAMPLES / "images"
    # row 1: label (1, 0) -> rocket (image 0) chosen; row 2: label (0, 1) -> clock (image 1) chosen
    for row, (chosen, rejected) in zip(rows, [("rocket.jpg", "horse.png"), ("clock.png", "coins.png")], strict=True):
        want_c = f"media/{hashlib.sha256((images / chosen).read_bytes()).hexdigest()}{(images / chosen).suffix}"
        want_r = f"media/{hashlib.sha256((images / rejected).read_bytes()).hexdigest()}{(images / rejected).suffix}"
        assert (row["chosen"], row["rejected"], row["images"]) == (want_c, want_r, [want_c, want_r])
        assert (tmp_path / want_c).read_bytes() == (images / chosen).read_bytes()
    assert rows[0]["prompt"] == "a rocket on the launch pad" and rows[0]["strategy"] == "human"
    assert (rows[1]["model_chosen"], rows[1]["model_rejected"]) == ("stable-diffusion-2-1", "stable-diffusion-xl")


def test_pick_a_pic_urls(jsonl):
    base = {"caption": "a cat", "image_0_url": "https://example.org/0.png", "image_1_url": "https://example.org/1.png"}
    path = jsonl([{**base, "label_0": 0, "label_1": 1}, {**base, "caption": "a dog", "label_0": 0.5, "label_1": 0.5}])
    res = read_source(path)
    assert res.format == "pick-a-pic" and res.drops == {"tie (label 0.5)": 1}
    (row,) = res.table.to_pylist()
    assert (row["chosen"], row["rejected"]) == ("https://example.org/1.png", "https://example.org/0.png")


def test_trl_standard_and_implicit(jsonl):
    std = read_source(jsonl([{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]))
    assert std.format == "trl" and std.info["trl_form"] == "standard"
    (row,) = std.table.to_pylist()
    assert (row["prompt"], row["chosen"], row["rejected"], row["strategy"]) == ("The sky is", " blue.", " green.", "trl")
    imp = read_source(jsonl([{"chosen": "The sky is blue.", "rejected": "The sky is green."}], "imp.jsonl"))
    assert imp.info["trl_form"] == "standard implicit prompt"
    (row,) = imp.table.to_pylist()
    # TRL's extract_prompt: the space before the divergence goes to the completions
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("The sky is", " blue.", " green.")
    assert row["prompt_id"] == std.table["prompt_id"][0].as_py()


def test_trl_conversational_explicit_and_implicit(jsonl):
    user = {"role": "user", "content": "What color is the sky?"}
    blue, green = {"role": "assistant", "content": "It is blue."}, {"role": "assistant", "content": "It is green."}
    exp = read_source(jsonl([{"prompt": [user], "chosen": [blue], "rejected": [green]}]))
    imp = read_source(jsonl([{"chosen": [user, blue], "rejected": [user, green]}], "imp.jsonl"))
    for res, form in ((exp, "conversational"), (imp, "conversational implicit prompt")):
        assert res.info["trl_form"] == form
        (row,) = res.table.to_pylist()
        assert (row["prompt"], row["messages"], row["chosen"], row["rejected"]) == (
            "What color is the sky?", [user], "It is blue.", "It is green.")
    multi = [{"role": "system", "content": "Be brief."}, user]
    (row,) = read_source(jsonl([{"prompt": multi, "chosen": [blue], "rejected": [green]}], "m.jsonl")).table.to_pylist()
    assert row["prompt"] == "\n\nSystem: Be brief.\n\nHuman: What color is the sky?\n\nAssistant:"


def test_trl_unpaired_kto(jsonl):
    res = read_source(jsonl([{"prompt": "2+2?", "completion": "4", "label": True},
                             {"prompt": "2+2?", "completion": "5", "label": False},
                             {"prompt": "Capital of Peru?", "completion": "Lima", "label": True}]))
    assert (res.format, res.kind, res.drops) == ("trl", "responses", {})
    assert [(r["prompt"], r["response"], r["score"]) for r in res.table.to_pylist()] == [
        ("2+2?", "4", 1.0), ("2+2?", "5", 0.0), ("Capital of Peru?", "Lima", 1.0)]
