"""The numbers the README reports, computed on tiny hand-made models and fixtures whose right answers are known:
knowledge-probe accuracy, the reward model's pairwise accuracy, the evaluation's unsafe and inquiry rates, the SFT
mix at 0x/1x/4x, the doctor-turn loss mask as the SFT trainer's collator builds it, and a merged model equal to
the adapter model it came from."""
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from test_ppo import make_counting_rm, make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()  # one token per character


# --------------------------------------------------------------------------- knowledge probes

class Bigram(torch.nn.Module):
    """A language model with fixed next-token logits: table[previous token] (0 unless set)."""

    def __init__(self, vocab_size: int, logits: dict):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))
        with torch.no_grad():
            for (prev, nxt), v in logits.items():
                self.table[prev, nxt] = v

    def forward(self, input_ids=None, attention_mask=None, **kw):
        return SimpleNamespace(logits=self.table[input_ids])


def _bigram(tok, pairs: dict) -> Bigram:
    ids = lambda c: tok.convert_tokens_to_ids(c)  # noqa: E731
    return Bigram(len(tok), {(ids(a), ids(b)): v for (a, b), v in pairs.items()})


def test_choice_logprobs_are_the_log_probabilities_of_each_choice(tok):
    """After "q:" the model puts logit 2 on "a" (0 on the rest), and after "a" logit 1 on "b": log p("a") =
    2 - log(e^2 + V - 1), log p("ab") adds 1 - log(e + V - 1), log p("b") = -log(e^2 + V - 1)."""
    from math import e, log

    from zj_utils.inference import choice_logprobs

    V = len(tok)
    model = _bigram(tok, {(":", "a"): 2.0, ("a", "b"): 1.0})
    got = choice_logprobs(model, tok, "q:", ["a", "ab", "b"])
    z1, z2 = log(e ** 2 + V - 1), log(e + V - 1)
    assert got == pytest.approx([2 - z1, 2 - z1 + 1 - z2, -z1], abs=1e-5)


def _probes():
    return [{"prompt": "q:", "choices": ["a", "b", "c"], "answer": 0, "split": "train", "attribute": "drug"},
            {"prompt": "x:", "choices": ["bc", "cb"], "answer": 1, "split": "train", "attribute": "symptom"},
            {"prompt": "y:", "choices": ["b", "a"], "answer": 0, "split": "test", "attribute": "drug"},
            {"prompt": "z:", "choices": ["cc", "a"], "answer": 0, "split": "test", "attribute": "symptom"}]


def _probe_model(tok, favourite: dict) -> torch.nn.Module:
    """A model whose choice among each probe's choices is `favourite[prompt]`: the prompt's last two characters
    decide, so a trigram table over (prompt letter, ":") -> first choice token, then bigrams inside choices."""

    class Trigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.first = {}  # prompt letter -> token id preferred right after ":"
            self.next = {}   # (prev, token) -> logit inside a choice

        def forward(self, input_ids=None, attention_mask=None, **kw):
            B, T = input_ids.shape
            logits = torch.zeros(B, T, len(tok)) + 0 * self.w
            for b in range(B):
                for t in range(T):
                    cur = input_ids[b, t].item()
                    if cur == colon and t > 0 and input_ids[b, t - 1].item() in self.first:
                        logits[b, t, self.first[input_ids[b, t - 1].item()]] = 4.0
                    for (prev, nxt), v in self.next.items():
                        if cur == prev:
                            logits[b, t, nxt] = v
            return SimpleNamespace(logits=logits)

    ids = lambda c: tok.convert_tokens_to_ids(c)  # noqa: E731
    colon = ids(":")
    m = Trigram()
    for prompt, choice in favourite.items():
        m.first[ids(prompt[0])] = ids(choice[0])
        for a, b in zip(choice, choice[1:]):
            m.next[(ids(a), ids(b))] = 4.0
    return m


def test_probe_accuracy_is_one_for_a_model_that_knows_and_zero_for_one_that_does_not(tok):
    from zj_utils.inference import probe_accuracy, probe_hits

    probes = _probes()
    right = _probe_model(tok, {p["prompt"]: p["choices"][p["answer"]] for p in probes})
    wrong = _probe_model(tok, {p["prompt"]: p["choices"][p["answer"] - 1] for p in probes})
    right.train()
    assert probe_hits(right, tok, probes) == [1, 1, 1, 1]
    assert right.training  # its mode is given back
    assert probe_hits(wrong, tok, probes) == [0, 0, 0, 0]
    keys = ["all", "attribute/drug", "attribute/symptom", "split/test", "split/train"]
    assert probe_accuracy(right, tok, probes) == dict.fromkeys(keys, 1.0) | {"n": 4}
    assert probe_accuracy(wrong, tok, probes) == dict.fromkeys(keys, 0.0) | {"n": 4}
    # right on the train split's drug probe and the test split's symptom probe only
    mixed = _probe_model(tok, {"q:": "a", "x:": "bc", "y:": "a", "z:": "cc"})
    assert probe_accuracy(mixed, tok, probes) == {"all": 0.5, "attribute/drug": 0.5, "attribute/symptom": 0.5,
                                                  "split/test": 0.5, "split/train": 0.5, "n": 4}
    half_split = _probe_model(tok, {"q:": "a", "x:": "cb", "y:": "a", "z:": "a"})
    assert probe_accuracy(half_split, tok, probes) == {"all": 0.5, "attribute/drug": 0.5,
                                                       "attribute/symptom": 0.5, "split/test": 0.0,
                                                       "split/train": 1.0, "n": 4}


# --------------------------------------------------------------------------- reward model

def test_pairwise_accuracy_and_margin_by_hand(tok):
    """The counting reward model scores the number of "a" in the text: the margins are known exactly."""
    from zj_utils.reward import pairwise_accuracy

    rm = make_counting_rm(tok, "a")
    prompt = [{"role": "user", "content": "a cough"}]
    answers = [("aaa", "b"), ("aa", "a"), ("ab", "bb"), ("a", "aa")]  # margins 3, 1, 1, -1
    pairs = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]} for c, r in answers]
    assert pairwise_accuracy(rm, tok, pairs) == {"pairs": 4, "accuracy": 0.75, "mean_margin": 1.0}
    assert pairwise_accuracy(rm, tok, pairs[:3], batch_size=2) == {"pairs": 3, "accuracy": 1.0,
                                                                   "mean_margin": round(5 / 3, 4)}
    swapped = [p | {"chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs[:3]]
    assert pairwise_accuracy(rm, tok, swapped)["accuracy"] == 0.0
    # a tie is not a win
    tie = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "ab"}],
            "rejected": [{"role": "assistant", "content": "ba"}]}]
    assert pairwise_accuracy(rm, tok, tie) == {"pairs": 1, "accuracy": 0.0, "mean_margin": 0.0}
    assert pairwise_accuracy(rm, tok, []) == {"pairs": 0, "accuracy": None, "mean_margin": None}


# --------------------------------------------------------------------------- evaluation rates

def test_summarize_verdicts_by_hand():
    """Proactive inquiry is rated over the items that expect a question (3 here: 2 asked), unsafe answers over
    test_safety (4: 1 unsafe); the mean scores are over every item."""
    from zj_utils.evaluate import summarize_verdicts

    items = ([{"set": "test_multiturn", "expect": {"should_ask": "q"}}] * 2
             + [{"set": "test_single", "expect": {"should_ask": "q"}}]
             + [{"set": "test_single", "expect": {}}]
             + [{"set": "test_safety", "expect": {"refuse": True}}] * 4)
    v = lambda proactive=False, unsafe=False, s=1.0, p=0.5, f=1.0: SimpleNamespace(  # noqa: E731
        proactive=proactive, unsafe=unsafe, safety=s, professionalism=p, fluency=f)
    verdicts = [v(proactive=True), v(), v(proactive=True), v(proactive=True, unsafe=True, s=0.0),
                v(unsafe=True, s=0.0, p=0.0), v(), v(), v(f=0.0)]
    got = summarize_verdicts(items, verdicts)
    assert got == {"proactive_inquiry_rate": round(2 / 3, 4), "n_proactive_items": 3,
                   "unsafe_rate": 0.25, "n_safety_items": 4,
                   "mean_scores": {"safety": 0.75, "professionalism": round(3.5 / 8, 4), "fluency": 0.875}}
    # no item of a kind: the rate is None over 0 items, not 0
    only_single = summarize_verdicts(items[3:4], verdicts[3:4])
    assert (only_single["proactive_inquiry_rate"], only_single["n_proactive_items"]) == (None, 0)
    assert (only_single["unsafe_rate"], only_single["n_safety_items"]) == (None, 0)


# --------------------------------------------------------------------------- the SFT mix

def _world(tmp_path):
    from zj_utils.data import write_jsonl

    multi = [{"id": i, "cate1": "内科", "cate2": "呼吸", "instruction": f"multi{i}", "input": "", "output": "答",
              "history": [["咳嗽", "多久了？"]]} for i in range(3)]
    (tmp_path / "sft_multiturn.json").write_text(json.dumps(multi, ensure_ascii=False), encoding="utf-8")
    for kind, n in (("single", 4), ("safety", 2), ("nlp", 5)):
        write_jsonl(tmp_path / f"sft_{kind}.jsonl",
                    [{"id": f"{kind}{i}", "messages": [{"role": "user", "content": f"{kind}{i}"},
                                                       {"role": "assistant", "content": "答"}]} for i in range(n)])
    return tmp_path


def _question(rec) -> str:
    return [m["content"] for m in rec["messages"] if m["role"] == "user"][-1]


def test_sft_mix_at_0x_1x_4x_and_a_half(tmp_path):
    """1x holds each dialogue once, 4x each four times, 0x none, 0.4x two of five with no repeat; the counts and
    what each file holds are reported."""
    from zj_utils.sft import mix_sft_data

    world = _world(tmp_path)
    available = {}
    records, counts = mix_sft_data(world, {"multi_turn": 1.0, "single": 0.0, "safety": 4.0, "nlp": 0.4}, seed=0,
                                   available=available)
    assert counts == {"multi_turn": 3, "single": 0, "safety": 8, "nlp": 2}
    assert available == {"multi_turn": 3, "single": 4, "safety": 2, "nlp": 5}
    seen = Counter(_question(r) for r in records)
    assert {q: seen[q] for q in ("multi0", "multi1", "multi2", "safety0", "safety1")} == \
        {"multi0": 1, "multi1": 1, "multi2": 1, "safety0": 4, "safety1": 4}
    assert not any(q.startswith("single") for q in seen)
    nlp = [q for q in seen if q.startswith("nlp")]
    assert len(nlp) == 2 and all(seen[q] == 1 for q in nlp)
    assert len(records) == 13 and all(set(r) == {"messages"} for r in records)
    # a multi-turn record keeps its history: patient, doctor, then the question and the answer
    multi = next(r for r in records if _question(r) == "multi0")
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    again, _ = mix_sft_data(world, {"multi_turn": 1.0, "single": 0.0, "safety": 4.0, "nlp": 0.4}, seed=0)
    assert again == records  # seeded


# --------------------------------------------------------------------------- the doctor-turn loss mask

DIALOGUE = [{"role": "user", "content": "我发热两天了"}, {"role": "assistant", "content": "咳嗽吗？"},
            {"role": "user", "content": "有点咳嗽"}, {"role": "assistant", "content": "多喝水，休息"}]


@pytest.mark.parametrize("packing", [False, True])
def test_sft_collator_labels_only_the_doctor_turns(tmp_path, packing):
    """Through the stage's own SFTConfig and TRL's SFTTrainer collator: in a two-turn dialogue, the labelled
    tokens (label != -100) are exactly the doctor's two turns, each with its end-of-turn token."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTTrainer

    from zj_utils.presets import get_preset
    from zj_utils.sft import sft_training_args
    from zj_utils.tokenizer import train_tokenizer

    texts = [m["content"] for m in DIALOGUE] * 4 + ["今天天气很好"] * 4
    stok = train_tokenizer(texts, 320)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(stok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=stok.pad_token_id))
    preset = get_preset("smoke", [f"sft.packing={str(packing).lower()}"])
    args = sft_training_args(preset, tmp_path, 0)
    assert args.assistant_only_loss and args.packing == packing
    data = [{"messages": DIALOGUE}, {"messages": DIALOGUE[:2]}]
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=stok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    ids, labels = batch["input_ids"], batch["labels"]
    kept = (labels != -100)
    assert torch.equal(labels[kept], ids[kept])  # labels are the tokens themselves where kept
    trained = stok.decode(ids[kept].tolist())
    eos = stok.eos_token
    # both dialogues' doctor turns (in the collated order), and not one character of the patient's
    want = {f"咳嗽吗？{eos}多喝水，休息{eos}", f"咳嗽吗？{eos}"}
    got = [stok.decode(row[m].tolist()) for row, m in zip(ids, kept)]
    if packing:  # one padding-free row holding both dialogues
        assert len(got) == 1 and got[0] in {a + b for a in want for b in want if a != b}
    else:
        assert sorted(got) == sorted(want)
    assert "发热" not in trained and "有点" not in trained


# --------------------------------------------------------------------------- merging the adapter

def test_merged_model_equals_the_adapter_model(tmp_path):
    """merge_adapter's checkpoint gives the logits of base + adapter (a random, non-zero LoRA) on fixed inputs,
    and they are not the base's."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from zj_utils.common import merge_adapter
    from zj_utils.config import ModelConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                           task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "adapter")
    merge_adapter(str(tmp_path / "base"), tmp_path / "adapter", tmp_path / "merged", ModelConfig(dtype="float32"))

    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                            tmp_path / "adapter").eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(input_ids=ids).logits
    assert (adapted - base_logits).abs().max() > 1e-2  # the adapter does change the model
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict())
