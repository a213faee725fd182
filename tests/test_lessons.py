"""zj_utils.lessons: what notebooks 02 and 03 show, each on a case whose answer is known."""
import pytest
import torch

from zj_utils import lessons
from zj_utils.config import LoraSpec


class CharTokenizer:
    """Token t decodes to the letter chr(96 + t) (1 -> a); 0 is EOS, written '|'."""
    eos_token = "|"

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.eos_token if t == 0 else chr(96 + t) for t in ids)


def test_table_aligns_columns_and_formats_numbers():
    text = lessons.table([{"k": "a", "n": 1234, "x": 0.5}, {"k": "bb", "n": 5, "x": 0.012345}, {"k": "c", "x": None}],
                         digits=2)
    assert text.splitlines() == ["k   n      x", "--  -----  -----", "a   1,234  0.5", "bb  5      0.012",
                                 "c   None   None"]


# --------------------------------------------------------------------------- NF4


def nf4_exact_matrix(rows=128, cols=64):
    """Every block of 64 weights is 4 copies of the 16 NF4 levels times a scale: NF4 represents it exactly."""
    from bitsandbytes.functional import get_4bit_type

    levels = get_4bit_type("nf4", device="cpu").float()  # the exact levels, not the rounded copy
    blocks = [levels.repeat(4) * (0.01 * (1 + i % 7)) for i in range(rows * cols // 64)]
    return torch.cat(blocks).reshape(rows, cols)


def test_nf4_storage_counts_the_bytes_qlora_describes():
    rep = lessons.nf4_storage(torch.randn(128, 64, generator=torch.Generator().manual_seed(0)))
    n = 128 * 64
    # 4 bits a weight, plus one absmax per block of 64: fp32 (0.5 bit) or uint8 with one fp32 scale per 256
    # blocks and one fp32 offset (0.127 bit in the limit; here 128 blocks share one scale)
    assert rep["bytes"] == {"fp32": 4 * n, "bf16": 2 * n, "nf4": n // 2 + 128 * 4, "nf4+dq": n // 2 + 128 + 4 + 4}
    assert rep["bits_per_weight"] == {"fp32": 32.0, "bf16": 16.0, "nf4": 4.5, "nf4+dq": 4.1328}
    assert rep["tables"] == {"nf4 levels": 16 * 4, "8-bit absmax levels": 256 * 4}
    assert len(rep["levels"]) == 16 and rep["levels"][0] == -1.0 and rep["levels"][-1] == 1.0 and 0.0 in rep["levels"]
    assert 0 < rep["relative_error"]["nf4"] < 0.15 and 0 < rep["relative_error"]["nf4+dq"] < 0.15
    assert len(rep["error"]) == n
    rows = lessons.nf4_rows(rep)
    assert [r["format"] for r in rows] == ["fp32", "bf16", "nf4", "nf4+dq"] and rows[3]["vs fp32"] == round(4232 / 32768, 4)


def test_nf4_is_exact_on_its_own_levels_and_double_quantisation_only_adds_absmax_rounding():
    rep = lessons.nf4_storage(nf4_exact_matrix())
    assert rep["max_abs_error"]["nf4"] == 0.0  # fp32 absmax: every weight is a level times its block's absmax
    assert 0 < rep["max_abs_error"]["nf4+dq"] < 0.01 * 7 * 0.01  # the 8-bit absmax is off by under 1%


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer LLaMA (hidden 64, MLP 128, vocab 40) saved as safetensors, as `zj base` saves the base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return str(path)


def test_nf4_storage_is_what_the_4bit_model_holds_and_lora_counts_by_module(tiny_llama):
    from zj_utils.common import load_model
    from zj_utils.presets import get_preset
    from zj_utils.training import prepare_qlora

    preset = get_preset("smoke")
    name, w = lessons.one_weight(tiny_llama)
    assert name == "model.layers.0.mlp.gate_proj.weight" and tuple(w.shape) == (128, 64)
    rep = lessons.nf4_storage(w)
    model = prepare_qlora(load_model(tiny_llama, preset.model, preset.quant),
                          LoraSpec(r=4, alpha=8, modules_to_save=["embed_tokens", "lm_head"]), quantized=True)
    assert lessons.nf4_matches_model(rep, model, name)
    assert not lessons.nf4_matches_model(lessons.nf4_storage(w + 0.1), model, name)

    got = lessons.trainable_parameters(model)
    rows = {r["module"]: r for r in got["rows"]}
    # LoRA of rank 4 on every linear layer but lm_head: r * (in + out) per layer, two layers
    for m, (i, o) in {"q_proj": (64, 64), "k_proj": (64, 64), "v_proj": (64, 64), "o_proj": (64, 64),
                      "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}.items():
        assert rows[m]["trainable"] == 2 * 4 * (i + o), m
        assert rows[m]["frozen"] == 2 * i * o, m  # the weights the nf4 matrix stands for, not its bytes
        assert (rows[m]["trained as"], rows[m]["frozen as"]) == ("LoRA A/B", "nf4"), m
    for m in ("embed_tokens", "lm_head"):  # modules_to_save: a trainable copy beside the frozen original
        assert (rows[m]["trainable"], rows[m]["frozen"], rows[m]["trained as"]) == (40 * 64, 40 * 64, "full copy")
    assert rows["norm"] == {"module": "norm", "trainable": 0, "frozen": 64, "trained as": "", "frozen as": "float32"}
    lora = 2 * 4 * (4 * 128 + 2 * 192 + 192)
    assert got["trainable"] == lora + 2 * 40 * 64 == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_linear = 2 * (4 * 64 * 64 + 3 * 64 * 128)
    assert got["frozen"] == frozen_linear + 2 * 40 * 64 + 2 * 2 * 64 + 64
    assert got["lora_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert got["full_copies"] == ["embed_tokens", "lm_head"]


# --------------------------------------------------------------------------- packing


def test_packing_view_follows_the_stage_packing_and_names_each_token_document():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    view = lessons.packing_view(docs, block_size=4, eos_id=0, seed=0)
    # seed 0 shuffles the documents to 0, 2, 1; 13 tokens with the EOS separators: 3 blocks and 1 left over
    assert view["order"] == [0, 2, 1]
    assert view["blocks"] == [[1, 2, 3, 0], [6, 7, 8, 9], [10, 0, 4, 5]]
    assert view["owners"] == [[0, 0, 0, -1], [2, 2, 2, 2], [2, -1, 1, 1]]
    assert (view["tail"], view["tail_owners"], view["tokens"], view["kept"]) == ([0], [-1], 13, 12)
    from zj_utils.base_model import pack_tokens
    assert view["blocks"] == pack_tokens(docs, 4, 0, epochs=1, seed=0)
    assert lessons.render_blocks(view, CharTokenizer()) == [
        "block 0 (4 tokens): [doc 0]abc|",
        "block 1 (4 tokens): [doc 2]fghi",
        "block 2 (4 tokens): [doc 2]j|[doc 1]de",
        "dropped tail (1 tokens, less than a block): |"]
    assert lessons.render_blocks(view, CharTokenizer(), max_chars=2)[1] == "block 1 (4 tokens): [doc 2]f…i"


# --------------------------------------------------------------------------- probes


def test_probes_by_attribute_reads_the_stage_metrics_and_counts_probes():
    before = {"all": 0.3, "attribute/drug": 0.25, "attribute/exam": 0.5, "split/sft": 0.3, "n": 6}
    after = {"all": 0.6, "attribute/drug": 0.75, "attribute/exam": 0.5, "split/sft": 0.6, "n": 6}
    probes = [{"attribute": "drug"}] * 4 + [{"attribute": "exam"}] * 2
    assert lessons.probes_by_attribute(before, after, probes) == [
        {"attribute": "drug", "n": 4, "before": 0.25, "after": 0.75, "gain": 0.5},
        {"attribute": "exam", "n": 2, "before": 0.5, "after": 0.5, "gain": 0.0}]
    fig = lessons.plot_probes_by_attribute(lessons.probes_by_attribute(before, after))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["drug", "exam"]


# --------------------------------------------------------------------------- SFT


def test_mark_trained_brackets_each_run_of_trained_tokens():
    tok = CharTokenizer()
    assert lessons.mark_trained(tok, [1, 2, 3, 4, 0, 5, 6, 0], [0, 0, 1, 1, 1, 0, 1, 1]) == "ab⟦cd|⟧e⟦f|⟧"
    assert lessons.mark_trained(tok, [], []) == ""


def test_sft_loss_mask_trains_on_the_doctor_turns_and_their_eos_only():
    from transformers import LlamaConfig, LlamaForCausalLM

    from zj_utils.presets import get_preset
    from zj_utils.tokenizer import train_tokenizer

    messages = [{"role": "user", "content": "我头痛三天了。"}, {"role": "assistant", "content": "请问发热吗？"},
                {"role": "user", "content": "不发热。"}, {"role": "assistant", "content": "先休息观察。"}]
    tok = train_tokenizer([m["content"] for m in messages] * 5, vocab_size=300)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    got = lessons.sft_loss_mask(get_preset("smoke"), tok, model, messages)
    trained = [t for t, m in zip(got["input_ids"], got["trained"]) if m]
    assert tok.decode(trained) == "请问发热吗？</s>先休息观察。</s>"
    assert all(lab == (t if m else -100) for t, lab, m in zip(got["input_ids"], got["labels"], got["trained"]))
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert got["input_ids"] == enc["input_ids"] and got["trained"] == [bool(m) for m in enc["assistant_masks"]]
    assert got["n_trained"] == len(trained) and got["untruncated_tokens"] == got["n_tokens"] == len(enc["input_ids"])
    assert lessons.mark_trained(tok, got["input_ids"], got["trained"]) == (
        "<s><human>:我头痛三天了。\n<bot>:⟦请问发热吗？</s>⟧<human>:不发热。\n<bot>:⟦先休息观察。</s>⟧")


class LengthTokenizer:
    """apply_chat_template: one token per character of the contents."""

    def apply_chat_template(self, messages, tokenize=True, return_dict=True):
        return {"input_ids": [0] * sum(len(m["content"]) for m in messages)}


def dialogue(*turns):
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}


def test_pick_dialogue_wants_enough_doctor_turns_within_max_length():
    short, long_, two = dialogue("a", "b"), dialogue("aaaa", "b", "c", "d"), dialogue("a", "b", "c", "d")
    assert lessons.pick_dialogue([short, long_, two], LengthTokenizer(), max_length=5) is two
    assert lessons.pick_dialogue([short, long_], LengthTokenizer(), max_length=5) is long_  # none fits: most turns


def test_sft_mix_table_reports_what_the_stage_used():
    metrics = {"composition": {"multi_turn": 30, "single": 10, "general": 10},
               "data": {"available": {"multi_turn": 15, "single": 20, "general": 10}}}
    config = {"sft": {"mix": {"multi_turn": 2.0, "single": 0.5, "general": 1.0}}}
    rows = lessons.sft_mix_table(metrics, config)
    assert [(r["kind"], r["available"], r["ratio"], r["used"], r["share"]) for r in rows] == [
        ("multi_turn", 15, 2.0, 30, 0.6), ("single", 20, 0.5, 10, 0.2), ("general", 10, 1.0, 10, 0.2)]
    assert rows[0]["paper's kind"] == "multi-turn doctor-patient dialogues (CMtMedQA)"


def test_inquiry_verdict_tells_asking_from_concluding():
    from zj_utils.world import WorldConfig, build_world

    world = build_world(WorldConfig(n_diseases=4), 0)
    item = lessons.pick_inquiry_item(world.test_multiturn + world.test_single)
    assert "should_ask" in item["expect"]
    assert lessons.inquiry_verdict(item["reference"], item, world.kg)["asks the key question"] is True
    concluded = lessons.inquiry_verdict(f"诊断考虑{item['expect']['disease']}。", item, world.kg)
    assert (concluded["asks about the case"], concluded["asks the key question"]) == (False, False)
    assert "concluded without asking the key question" in concluded["reasons"]
    with pytest.raises(ValueError):
        lessons.pick_inquiry_item([{"expect": {}, "messages": []}])


def test_render_record_shows_each_shape():
    assert lessons.render_record({"text": "［虚构］甲病以发热为主。"}) == "［虚构］甲病以发热为主。"
    assert lessons.render_record({"messages": [{"role": "user", "content": "头痛"},
                                               {"role": "assistant", "content": "多久了？"}]}) == \
        "user: 头痛\nassistant: 多久了？"
    assert lessons.render_record({"history": [["发热", "几天了？"]], "instruction": "三天", "output": "考虑甲病。"}) == \
        "user: 发热\nassistant: 几天了？\nuser: 三天\nassistant: 考虑甲病。"
    assert lessons.render_record({"prompt": "甲病的科室：", "choices": ["眼科", "内科"], "answer": 1}) == \
        "甲病的科室： 眼科 / ✓内科"


def test_one_disease_everywhere_finds_the_disease_in_every_kind(tmp_path):
    from zj_utils.world import WorldConfig, build_world, write_world

    world = build_world(WorldConfig(), 0)
    write_world(world, tmp_path)
    d = world.kg["diseases"][0]
    rows = lessons.one_disease_everywhere(tmp_path, d["id"])
    assert [r["file"] for r in rows] == list(lessons.DISEASE_FILES)  # the disease is in every kind
    for r in rows:
        # each record is about this disease: its name, or (NLP instructions, safety prompts) its drug or symptoms
        facts = (d["name"], d["drug"], d["alt_drug"], d["exam"], *d["symptoms"])
        assert any(f in r["text"] for f in facts), r
    assert next(r for r in rows if r["file"] == "probes.jsonl")["text"].count("✓") == 1
