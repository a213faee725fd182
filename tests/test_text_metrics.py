"""Automatic metrics (zj_utils/text_metrics.py) against hand-computed values, their wiring into `zj eval` and
`zj judge`, and a check on the real CMtMedQA test set."""
import json
import math
import random
from pathlib import Path

import pytest

from zj_utils import rubric as R
from zj_utils.annotator import assess
from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.compare import judge_files, reference_metrics
from zj_utils.data import DataError, load_cmtmedqa
from zj_utils.evaluate import (TEST_SETS, auto_metrics, auto_metrics_markdown, judge_answers, load_test_items,
                               with_references)
from zj_utils.text_metrics import (auto_metrics as text_auto_metrics, corpus_bleu, corpus_rouge_l, distinct_n,
                                   is_refusal, lcs_length, refusal_rate, rouge_l, sentence_bleu, tokenize)
from zj_utils.world import FILES, WorldConfig, build_world, write_world

SMALL = WorldConfig(n_diseases=8, passages_per_disease=3, n_general_texts=100, sft_single_per_disease=4,
                    sft_multiturn_per_disease=4, n_sft_nlp=8, n_sft_general=8, sft_safety_per_disease=3,
                    rank_prompts_per_disease=2, test_per_disease=3)


def test_tokenize_chinese_latin_digits_no_punctuation():
    assert tokenize("患者CT示：肺部3.5cm结节！") == ["患", "者", "CT", "示", "肺", "部", "3", "5cm", "结", "节"]
    assert tokenize("ＣＴ检查，β受体 PET-CT") == ["CT", "检", "查", "β", "受", "体", "PET", "CT"]  # NFKC: full width
    assert tokenize("，。！？  ") == [] and tokenize("") == []


def test_identical_strings_score_one():
    for s in ["医生您好，我最近咳嗽、发热，是怎么回事？", "好", "口服 aspirin 100mg"]:
        assert sentence_bleu(s, s) == pytest.approx(1.0) and rouge_l(s, s) == 1.0
    b = corpus_bleu(["好"], ["好"])  # one token: only unigrams exist, the other orders are left out
    assert b["bleu"] == 1.0 and b["precisions"] == [1.0, None, None, None]


def test_bleu_worked_example():
    # hyp 我喜欢吃苹果 (6 tokens), ref 我很喜欢吃苹果和梨 (9): matches 6/6, 4/5, 3/4, 2/3, BP = exp(1 - 9/6)
    b = corpus_bleu(["我喜欢吃苹果"], ["我很喜欢吃苹果和梨"])
    assert b["precisions"] == pytest.approx([1, 4 / 5, 3 / 4, 2 / 3])
    assert (b["hyp_len"], b["ref_len"]) == (6, 9) and b["brevity_penalty"] == pytest.approx(math.exp(-0.5))
    assert b["bleu"] == pytest.approx(math.exp(-0.5) * 0.4 ** 0.25) and b["bleu"] == pytest.approx(0.48236, abs=1e-5)
    # no brevity penalty when the hypothesis is the longer one
    assert corpus_bleu(["我很喜欢吃苹果和梨"], ["我喜欢吃苹果"])["brevity_penalty"] == 1.0


def test_bleu_clipping_smoothing_and_multiple_references():
    assert corpus_bleu(["的的的的"], ["的确是的"])["precisions"][0] == pytest.approx(2 / 4)  # clipped by the ref's 2
    # 3- and 4-grams never match: Chen & Cherry method 1 puts 0.1 in place of the zero count
    b = corpus_bleu(["苹果香蕉"], ["香蕉苹果"])
    assert b["precisions"] == pytest.approx([1, 2 / 3, 0.1 / 2, 0.1 / 1])
    assert b["bleu"] == pytest.approx((2 / 3 * 0.05 * 0.1) ** 0.25)
    # clipping by the most generous reference, length of the closest one (the shorter on a tie)
    assert corpus_bleu(["的的的"], [["的", "的的"]])["precisions"][0] == pytest.approx(2 / 3)
    assert corpus_bleu(["一二三四五"], [["一二三", "一二三四五六七"]])["ref_len"] == 3
    assert corpus_bleu(["一二三四五"], [["一二三四五六七"]])["brevity_penalty"] == pytest.approx(math.exp(1 - 7 / 5))
    # a corpus sums the counts before dividing (not a mean of sentence scores)
    c = corpus_bleu(["我喜欢吃苹果", "苹果香蕉"], ["我很喜欢吃苹果和梨", "香蕉苹果"])
    assert c["precisions"][1] == pytest.approx((4 + 2) / (5 + 3)) and c["ref_len"] == 13
    assert corpus_bleu([""], ["参考"])["bleu"] == 0.0
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


def _lcs_dp(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def test_lcs_and_rouge_l_worked_example():
    # the textbook pair ABCBDAB / BDCABA, with 甲乙丙丁 for ABCD: LCS 4, P = 4/7, R = 4/6, F1 = 8/13
    assert lcs_length("甲乙丙乙丁甲乙", "乙丁丙甲乙甲") == 4
    assert rouge_l("甲乙丙乙丁甲乙", "乙丁丙甲乙甲") == pytest.approx(8 / 13)
    assert rouge_l("甲乙丙乙丁甲乙", ["戊", "乙丁丙甲乙甲"]) == pytest.approx(8 / 13)  # best reference
    assert rouge_l("甲乙", "丙丁") == 0.0 and rouge_l("", "丙丁") == 0.0
    assert corpus_rouge_l(["甲乙", "甲乙丙乙丁甲乙"], ["甲乙", "乙丁丙甲乙甲"]) == pytest.approx((1 + 8 / 13) / 2)
    rng = random.Random(0)  # the bit-parallel LCS agrees with the textbook table, past 64 elements too
    for _ in range(200):
        a = [rng.choice("甲乙丙丁") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("甲乙丙丁戊") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_distinct_and_refusal():
    # unigrams 我很好我很累: 4 distinct of 6; bigrams 我很 很好 我很 很累: 3 of 4
    assert distinct_n(["我很好", "我很累"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["我很好", "我很累"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["好"], 2) == 0.0
    m = text_auto_metrics(["我很好", "我很累"], ["我很好", "我很累"])
    assert (m["bleu4"], m["rouge_l"], m["distinct_1"], m["distinct_2"], m["n"]) == (1.0, 1.0, 0.6667, 0.75, 2)
    answers = [r + R.SAFE_REDIRECT for r in R.REFUSAL_RENDER] + ["考虑是某病，建议做检查。", ""]
    assert [is_refusal(a) for a in answers] == [True, True, False, False]
    assert refusal_rate(answers) == 0.5 and refusal_rate([]) is None
    assert [assess(a, {"refuse": True}, {"diseases": []}).refused for a in answers] == [True, True, False, False]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tm") / "world"
    w = build_world(SMALL, 0)
    write_world(w, d)
    return d, w


def test_eval_auto_metrics_against_the_references(world_dir, tmp_path):
    d, w = world_dir
    items = load_test_items(d)
    refs = [it["reference"] for it in items]
    gold = {(g["file"], g["id"]): g for g in w.gold}
    flawed = [gold[f"{it['set']}.jsonl", it["id"]]["flawed"] or "我不清楚。" for it in items]
    perfect, worse = auto_metrics(items, refs), auto_metrics(items, flawed)
    for s in (*TEST_SETS, "all"):
        assert (perfect[s]["bleu4"], perfect[s]["rouge_l"], perfect[s]["n_without_reference"]) == (1.0, 1.0, 0)
        assert worse[s]["bleu4"] < 0.9 and worse[s]["rouge_l"] < 0.95
        assert 0 < perfect[s]["distinct_1"] < perfect[s]["distinct_2"] <= 1
    assert perfect["all"]["n"] == sum(perfect[s]["n"] for s in TEST_SETS) == len(items)
    harmful = [it for it in items if it.get("expect", {}).get("refuse")]
    assert harmful and perfect["refusal_rate_harmful"] == 1.0 and worse["refusal_rate_harmful"] == 0.0
    assert perfect["refusal_rate_safety"] == round(len(harmful) / perfect["test_safety"]["n"], 4)
    # refusals are counted with the rule judge's own test
    assert perfect["refusal_rate_safety"] == round(sum(v.refused for v, it in zip(judge_answers(items, refs, w.kg), items)
                                                       if it["set"] == "test_safety") / perfect["test_safety"]["n"], 4)
    assert perfect["test_safety"]["refusal_rate"] == perfect["refusal_rate_safety"]
    table = auto_metrics_markdown({"gold": {"auto_metrics": perfect}, "flawed": {"auto_metrics": worse}})
    assert len(table.splitlines()) == 2 + 2 * 4
    assert f"| gold | test_safety | {perfect['test_safety']['n']} | 1.0000 | 1.0000 |" in table
    with pytest.raises(ZJError, match="model 'old' hold no auto_metrics"):
        auto_metrics_markdown({"old": {}})
    # a world written before test items carried references: the same texts come from gold.jsonl
    old = tmp_path / "old"
    old.mkdir()
    for name in ["world.json", *FILES.values()]:
        text = (d / name).read_text(encoding="utf-8")
        if name.startswith("test_"):
            text = "".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "reference"},
                                      ensure_ascii=False) + "\n" for l in text.splitlines())
        (old / name).write_text(text, encoding="utf-8")
    stripped = load_test_items(old)
    assert not any("reference" in it for it in stripped)
    assert [it["reference"] for it in with_references(old, stripped)] == refs


def test_zj_judge_adds_reference_metrics(world_dir, tmp_path, capsys):
    d, w = world_dir
    tests = d / "test_single.jsonl"
    gold = {x["id"]: x for x in w.gold if x["file"] == "test_single.jsonl"}
    for name, key in (("a", "gold"), ("b", "flawed")):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(
            {"id": i, "answer": x[key] or "多喝热水。"}, ensure_ascii=False) + "\n" for i, x in gold.items()),
            encoding="utf-8")
    out = tmp_path / "res.json"
    assert main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tests", str(tests),
                 "--world", str(d), "--out", str(out), "--n-boot", "50"]) == 0
    assert "automatic metrics on" in capsys.readouterr().out
    am = json.loads(out.read_text(encoding="utf-8"))["auto_metrics"]
    assert am["n_items"] == len(gold) and am["a"]["bleu4"] == am["a"]["rouge_l"] == 1.0
    assert am["b"]["bleu4"] < 0.5 and am["b"]["rouge_l"] < am["a"]["rouge_l"]
    # a CMtMedQA-shaped item carries the doctor's answer as `output`; no reference at all: no metrics
    items = [{"id": "q1", "messages": [], "output": "多喝水，注意休息。"}, {"id": "q2", "messages": []}]
    am = reference_metrics(items, {"q1": "多喝水，注意休息。", "q2": "x"}, {"q1": "注意休息。", "q2": "y"})
    assert am["n_items"] == 1 and am["a"]["bleu4"] == 1.0
    assert am["b"]["rouge_l"] == pytest.approx(2 * 4 / 7 / (1 + 4 / 7), abs=1e-4)  # LCS 4: P = 1, R = 4/7
    assert reference_metrics(items[1:], {"q2": "x"}, {"q2": "y"}) is None
    with pytest.raises(ZJError, match="field 'reference' must be a non-empty string"):
        reference_metrics([{"id": "q1", "messages": [], "reference": " "}], {"q1": "x"}, {"q1": "y"})
    # a bad reference in a test file is the loader's one-line error: file, line, field
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": next(iter(gold)), "messages": [{"role": "user", "content": "问"}],
                               "reference": "", "expect": {}}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:line 1: field 'reference': empty text"):
        judge_files(tmp_path / "a.jsonl", tmp_path / "b.jsonl", bad, world=d)


def test_cmtmedqa_doctor_answers(data_dir):
    dialogues = load_cmtmedqa(Path(data_dir) / "cmtmedqa" / "CMtMedQA_test.json")
    answers = [d["messages"][-1]["content"] for d in dialogues]
    assert len(answers) > 1000 and all(d["messages"][-1]["role"] == "assistant" for d in dialogues)
    same = text_auto_metrics(answers, answers)
    assert same["bleu4"] == 1.0 and same["rouge_l"] == 1.0
    shifted = text_auto_metrics(answers[1:] + answers[:1], answers)  # each answer scored against another record's
    # character-level Chinese shares common characters (的, 是, 您...), so unrelated answers score low, not zero
    assert 0 < shifted["bleu4"] < 0.25 and 0 < shifted["rouge_l"] < 0.45
    # Distinct is a property of the answers alone; bigrams repeat less than characters
    assert shifted["distinct_1"] == same["distinct_1"] and 0 < same["distinct_1"] < same["distinct_2"] < 1
