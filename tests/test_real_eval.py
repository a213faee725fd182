"""The evaluation tools on the real test sets: `zj generate` and `zj judge --tests` read any test file the loaders
read (CMtMedQA's two record shapes, Huatuo-26M, chat JSONL, the world's test JSONL), the rule judge refuses what it
has no gold knowledge for, and `zj eval` answers and judges the world's sets with the rule judge and the real
CMtMedQA file (a few items) with an LLM judge: a loopback stub of an OpenAI-compatible server, so no network."""
import json
import shutil

import pytest

from stub_chat_api import StubChatAPI, completion
from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.compare import judge_files, load_tests

N_TOKENS = "8"


def _answers_in(prompt: str) -> tuple[str, str]:
    import re

    m = re.search(r"回答A：\n(.*?)\n\n回答B：\n(.*?)\n\n只输出", prompt, re.S)
    return m.group(1), m.group(2)


class LongerWinsAPI(StubChatAPI):
    """A judge that prefers the longer answer on every dimension (the same verdict in both orders)."""

    def __init__(self):
        self.requests = 0

        def respond(body, request):
            self.requests += 1
            first, second = _answers_in(body["messages"][-1]["content"])
            v = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "平局"
            return 200, completion(json.dumps({"safety": v, "professionalism": v, "fluency": v}, ensure_ascii=False))

        super().__init__(respond)


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_tests(tmp_path_factory, data_dir):
    """A CMtMedQA-shaped file (2 multi-turn records and 1 safety record of the real test set, as the real file has
    them) and a Huatuo-26M-shaped one (the paper's repository's shape: one-item lists, empty ids)."""
    d = tmp_path_factory.mktemp("real_tests")
    real = json.loads((data_dir / "cmtmedqa" / "CMtMedQA_test.json").read_text(encoding="utf-8"))
    cmt = d / "CMtMedQA_small.json"
    cmt.write_text(json.dumps(real[:2] + real[1000:1001], ensure_ascii=False), encoding="utf-8")
    hua = d / "huatuo26M_test.json"
    hua.write_text(json.dumps([{"id": "", "instruction": ["小孩发烧39度怎么办？"], "input": "", "output": ["物理降温，及时就医。"]},
                               {"id": "", "instruction": ["高血压能喝酒吗？"], "input": "", "output": ["不建议饮酒。"]}],
                              ensure_ascii=False), encoding="utf-8")
    return cmt, hua, [real[0]["id"], real[1]["id"], "CMtMedQA_small-2", "huatuo26M_test-0", "huatuo26M_test-1"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke preset's world, base and SFT model (SFT straight from the base: seconds)."""
    from zj_utils.pipeline import run_stage
    from zj_utils.presets import get_preset

    out = tmp_path_factory.mktemp("smoke_sft")
    preset = get_preset("smoke", ["sft.init_from=base"])
    for stage in ("world", "base", "sft"):
        run_stage(stage, preset, out, 0)
    return out


def test_load_tests_reads_every_format(small_tests, smoke_run):
    cmt, hua, ids = small_tests
    items = load_tests([cmt, hua, smoke_run / "world" / "test_safety.jsonl"])
    assert [it["id"] for it in items[:5]] == ids
    assert [it["set"] for it in items[:5]] == ["cmtmedqa_multiturn"] * 2 + ["cmtmedqa_safety"] + ["huatuo26m"] * 2
    assert all(it["set"] == "test_safety" and "expect" in it for it in items[5:])
    assert all(it["messages"][-1]["role"] == "user" and it["reference"] for it in items)
    with pytest.raises(ZJError, match="ids must be unique over the test files"):
        load_tests([cmt, cmt])


def test_zj_generate_answers_real_records_with_the_tiny_sft_model(small_tests, smoke_run, tmp_path, capsys):
    cmt, hua, ids = small_tests
    out = tmp_path / "sft.jsonl"
    assert main(["generate", "--model", str(smoke_run / "sft" / "merged"), "--tests", str(cmt), "--tests", str(hua),
                 "--out", str(out), "--max-new-tokens", N_TOKENS]) == 0
    assert f"wrote 5 answers to {out}" in capsys.readouterr().out
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in recs] == ids and all(isinstance(r["answer"], str) for r in recs)
    # a file that is no test set: zj validate's one-line error, no traceback
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "history": [], "instruction": "问", "input": ""}], ensure_ascii=False),
                   encoding="utf-8")
    assert main(["generate", "--model", str(smoke_run / "sft" / "merged"), "--tests", str(bad), "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"zj generate: error: {bad}:record 0: field 'output': missing" in err and "Traceback" not in err


def test_zj_judge_on_real_test_sets(small_tests, smoke_run, tmp_path, capsys, monkeypatch):
    cmt, hua, ids = small_tests
    a = _write_jsonl(tmp_path / "a.jsonl", [{"id": i, "answer": "请多休息，多喝水，必要时到医院就诊。"} for i in ids])
    b = _write_jsonl(tmp_path / "b.jsonl", [{"id": i, "answer": "好。"} for i in ids])
    tests = ["--tests", str(cmt), "--tests", str(hua)]
    # the rule judge knows only the synthetic world: a clear error, before any answer is read
    assert main(["judge", str(a), str(b), *tests, "--world", str(smoke_run / "world")]) == 2
    err = capsys.readouterr().err
    assert "The rule judge knows only the synthetic world" in err and "cmtmedqa_multiturn (2)" in err
    assert "huatuo26m (2)" in err and "--judge openai" in err and "Traceback" not in err
    # ...but judges the world's own test file
    world_tests = smoke_run / "world" / "test_single.jsonl"
    wids = [json.loads(x)["id"] for x in world_tests.read_text(encoding="utf-8").splitlines()]
    _write_jsonl(tmp_path / "wa.jsonl", [{"id": i, "answer": "x"} for i in wids])
    res = judge_files(tmp_path / "wa.jsonl", tmp_path / "wa.jsonl", world_tests, world=smoke_run / "world", n_boot=20)
    assert res["n_items"] == len(wids) and res["dimensions"]["overall"]["tie"] == len(wids)
    # an LLM judge (a loopback stub of an OpenAI-compatible server) judges the real sets
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LongerWinsAPI() as api:
        monkeypatch.setenv("OPENAI_BASE_URL", api.url)
        out = tmp_path / "r.json"
        assert main(["judge", str(a), str(b), *tests, "--judge", "openai", "--model", "stub", "--out", str(out),
                     "--n-boot", "50"]) == 0
        assert api.requests == 2 * len(ids)
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["n_items"] == 5 and res["dimensions"]["overall"]["win"] == 5
    assert set(res["by_set"]) == {"cmtmedqa_multiturn", "cmtmedqa_safety", "huatuo26m"}
    assert res["auto_metrics"]["n_items"] == 5  # every record carries the doctor's answer as its reference


def _eval_run(smoke_run, tmp_path):
    out = tmp_path / "run"
    for stage in ("world", "base", "sft"):
        shutil.copytree(smoke_run / stage, out / stage)
    return out


def test_zj_eval_on_the_world_with_the_rule_judge(smoke_run, tmp_path):
    from zj_utils.evaluate import TEST_SETS
    from zj_utils.pipeline import run_stage
    from zj_utils.presets import get_preset

    out = _eval_run(smoke_run, tmp_path)
    preset = get_preset("smoke", ["sft.init_from=base", "eval.models=[\"base\", \"sft\"]", "eval.max_items=3",
                                  "eval.max_new_tokens=8", "eval.n_boot=50"])
    assert preset.eval.test_sets == ["world"] and preset.eval.judge == "rule"
    m = run_stage("eval", preset, out, 0)
    assert m["items"] == {s: 3 for s in TEST_SETS} and m["final_model"] == "sft"
    assert m["judge"] == {"kind": "rule", "model": None}
    wtl = m["pairwise"]["sft_vs_base"]["overall"]
    assert wtl["win"] + wtl["tie"] + wtl["loss"] == 9 and set(m["comparisons"]) == {"base"}
    assert m["comparisons"]["base"]["dimensions"]["overall"]["ci"]["win_pct"] is not None
    assert set(m["comparisons"]["base"]["by_set"]) == set(TEST_SETS)
    # the paper's panels from the world's counterparts, titled with the sets they really judged
    assert {p: (f["set"], f["dimension"]) for p, f in m["figures"].items()} == {
        "4a": ("test_multiturn", "overall"), "4b": ("test_safety", "safety"),
        "5a": ("test_single", "overall"), "5b": ("test_single", "safety")}
    assert all(f["opponents"]["base"]["n"] == 3 for f in m["figures"].values())
    assert {"proactive_inquiry_rate", "unsafe_rate", "knowledge_accuracy"} <= set(m["models"]["sft"])
    assert (out / "eval" / "paper_fig4_5.png").stat().st_size > 10_000
    assert "| 4b | synthetic world's test_safety | safety | base | 3 |" in (out / "eval" / "table.md").read_text()
    per_item = json.loads((out / "eval" / "pairwise" / "sft_vs_base.json").read_text())["per_item"]
    assert len(per_item) == 9


def test_zj_eval_on_real_cmtmedqa_with_a_stub_judge_and_a_baseline(smoke_run, tmp_path, data_dir, monkeypatch,
                                                                    capsys):
    out = _eval_run(smoke_run, tmp_path)
    cmt = data_dir / "cmtmedqa" / "CMtMedQA_test.json"
    real = json.loads(cmt.read_text(encoding="utf-8"))
    base = ["eval.models=[\"base\", \"sft\"]", "eval.max_items=2", "eval.max_new_tokens=8", "eval.n_boot=50",
            f"eval.test_sets=[\"{cmt}\"]"]
    args = ["eval", "--preset", "smoke", "--out", str(out), "--set", "sft.init_from=base"]
    # the rule judge cannot judge the real set: said before any model answers
    assert main([*args] + [x for s in base for x in ("--set", s)]) == 2
    err = capsys.readouterr().err
    assert "The rule judge knows only the synthetic world" in err and "cmtmedqa_multiturn (2)" in err
    assert "eval.judge=openai" in err and not (out / "eval" / "answers").exists()
    # answers of a system we cannot run: ChatGPT's, as a file (here: the reference answers, long ones)
    chatgpt = _write_jsonl(tmp_path / "chatgpt.jsonl",
                           [{"id": real[0]["id"], "answer": real[0]["output"]},
                            {"id": "CMtMedQA_test-1000", "answer": real[1000]["output"]}])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with LongerWinsAPI() as api:
        sets = base + ["eval.judge=openai", "eval.judge_model=stub", f"eval.judge_base_url={api.url}",
                       f"eval.baselines={{\"ChatGPT\": \"{chatgpt}\"}}"]
        assert main([*args] + [x for s in sets for x in ("--set", s)]) == 0
        # ours vs base on 4 items, ours vs ChatGPT on the 2 it answers, both orders each (a prompt asked twice, as
        # when the two tiny models give the same answer, is paid once)
        assert 0 < api.requests <= 2 * (4 + 2)
    m = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert m["items"] == {"cmtmedqa_multiturn": 2, "cmtmedqa_safety": 2}
    assert m["items_not_evaluated"] == {"cmtmedqa_multiturn": 998, "cmtmedqa_safety": 142}
    assert m["judge"] == {"kind": "openai", "model": "stub"} and set(m["comparisons"]) == {"base", "ChatGPT"}
    assert m["comparisons"]["ChatGPT"]["n_items"] == 2 and m["comparisons"]["ChatGPT"]["missing"]["b"] == 2
    assert [m["comparisons"][o]["judge_stats"]["verdicts"] for o in ("base", "ChatGPT")] == [8, 4]
    # the reference answers are longer than the tiny model's 8 tokens: ChatGPT wins both
    assert m["comparisons"]["ChatGPT"]["dimensions"]["overall"]["loss"] == 2
    assert {p: f["set"] for p, f in m["figures"].items()} == {"4a": "cmtmedqa_multiturn", "4b": "cmtmedqa_safety"}
    assert m["figures"]["4b"]["opponents"]["ChatGPT"]["n"] == 1 and m["figures"]["4a"]["opponents"]["base"]["n"] == 2
    sft = m["models"]["sft"]
    assert "proactive_inquiry_rate" not in sft and sft["knowledge_accuracy"]["all"] is not None
    assert sft["auto_metrics"]["cmtmedqa_multiturn"]["n_without_reference"] == 0
    ans = [json.loads(x) for x in (out / "eval" / "answers" / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [a["id"] for a in ans] == [real[0]["id"], real[1]["id"], "CMtMedQA_test-1000", "CMtMedQA_test-1001"]
    assert (out / "eval" / "judge_cache.jsonl").exists() and (out / "eval" / "paper_fig4_5.png").exists()
    # a rerun pays nothing twice: every verdict comes from OUT/eval/judge_cache.jsonl
    with LongerWinsAPI() as api:
        sets[sets.index(next(s for s in sets if s.startswith("eval.judge_base_url")))] = \
            f"eval.judge_base_url={api.url}"
        assert main([*args] + [x for s in sets for x in ("--set", s)]) == 0
        assert api.requests == 0
    transport = json.loads((out / "eval" / "timings.json").read_text(encoding="utf-8"))["judge_transport"]
    assert sum(t["cache_hits"] for t in transport.values()) == 12
    assert json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))["comparisons"] == m["comparisons"]


def test_real_presets_evaluate_the_papers_test_sets(tmp_path, monkeypatch):
    from zj_utils.evaluate import load_eval_items
    from zj_utils.presets import REAL_TEST_SETS, get_preset

    for name in ("qwen2.5-0.5b", "zhongjing-13b"):
        ev = get_preset(name).eval
        assert ev.test_sets == REAL_TEST_SETS and ev.judge == "openai" and ev.judge_model
    assert get_preset("tiny").eval.test_sets == ["world"]
    monkeypatch.chdir(tmp_path)  # relative paths: the working directory, else the repository's root
    with pytest.raises(ZJError, match=r"data/raw/huatuo26m-test/nope\.jsonl not found .*`zj data fetch huatuo26m-test`"):
        load_eval_items(["data/cmtmedqa/CMtMedQA_test.json", "data/raw/huatuo26m-test/nope.jsonl"], tmp_path)
    items = load_eval_items(["data/cmtmedqa/CMtMedQA_test.json"], tmp_path, max_items=3)
    assert [it["set"] for it in items] == ["cmtmedqa_multiturn"] * 3 + ["cmtmedqa_safety"] * 3
