"""The judges behind one interface, the LLM judge against a local fake chat-completions server (loopback only)
that injects faults, `zj judge` end to end, and the paper's Figures 4-5 redrawn."""
import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from stub_chat_api import StubChatAPI, completion
from zj_utils import rubric as R
from zj_utils.annotator import assess, compare
from zj_utils.api_judge import OpenAIChatJudge
from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.compare import format_table, judge_pairs
from zj_utils.judges import (DIMS, LocalModelJudge, RuleJudge, build_messages, combine_orders, estimate_prompt_tokens,
                             estimate_tokens, parse_verdict)
from zj_utils.world import WorldConfig, build_world, write_world

SECRET = "sk-test-DO-NOT-LEAK-4242"
SMALL = WorldConfig(n_diseases=4, passages_per_disease=1, n_general_texts=10, sft_single_per_disease=1,
                    sft_multiturn_per_disease=1, n_sft_nlp=2, n_sft_general=2, sft_safety_per_disease=1,
                    rank_prompts_per_disease=1, test_per_disease=2, heldout_per_disease=1)


# --------------------------------------------------------------------------- fake chat-completions server

def _answers_in(prompt: str) -> tuple[str, str]:
    m = re.search(r"回答A：\n(.*?)\n\n回答B：\n(.*?)\n\n只输出", prompt, re.S)
    return m.group(1), m.group(2)


def policy(prompt: str) -> str:
    """A judge with a position bias: safety goes to the answer marked SAFE, professionalism is a tie, and
    fluency always goes to whichever answer is shown first (so it flips with the order)."""
    first, second = _answers_in(prompt)
    safety = "A" if "SAFE" in first else "B" if "SAFE" in second else "平局"
    return "```json\n" + json.dumps({"safety": safety, "professionalism": "平局", "fluency": "A"},
                                    ensure_ascii=False) + "\n```"


class FakeAPI(StubChatAPI):
    """Serves POST /v1/chat/completions. `script` holds the first requests' faults, in order:
    ("sleep", s) answers after s seconds (a client timeout), ("status", code, headers, body), ("content", text);
    after it, every request gets policy()'s verdict."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []

        def respond(body, request):
            self.requests.append({"path": request.path, "auth": request.headers.get("Authorization"), "body": body})
            action = self.script.pop(0) if self.script else ("policy",)
            if action[0] == "sleep":
                time.sleep(action[1])
                return 200, completion("{}")
            if action[0] == "status":
                return action[1], {"error": action[3]}, action[2]
            if action[0] == "content":
                return 200, completion(action[1])
            return 200, completion(policy(body["messages"][-1]["content"]))

        super().__init__(respond, poll_interval=0.05)


ITEMS = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"［虚构］我发热第{i}天了，怎么办？"}], "expect": {}}
         for i in range(3)]


def _judge(url, cache, **kw):
    j = OpenAIChatJudge("fake-judge", base_url=url, cache_path=cache, timeout=0.3, max_retries=4, backoff=0.01,
                        max_backoff=0.05, **kw)
    j.sleeps = []
    j._sleep = j.sleeps.append  # record the waits instead of sleeping them
    return j


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()] if p.exists() else []


def _assert_no_secret(root: Path, *texts):
    for f in root.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"
    for t in texts:
        assert SECRET not in t


# --------------------------------------------------------------------------- the LLM judge

def test_prompt_is_built_from_the_rubric_and_verdicts_parse():
    msgs = build_messages(ITEMS[0], "回答一", "回答二")
    text = msgs[-1]["content"]
    assert all(d.zh in text for d in R.DIMENSIONS) and all(a.zh in text for a in R.ABILITIES)
    assert "患者：［虚构］我发热第0天了" in text and _answers_in(text) == ("回答一", "回答二")
    assert parse_verdict('{"safety": "A", "professionalism": "B", "fluency": "平局"}') == \
        {"safety": 1, "professionalism": -1, "fluency": 0}
    assert parse_verdict('结论：\n```json\n{"safety":"b","professionalism":"tie","fluency":"A"}\n```') == \
        {"safety": -1, "professionalism": 0, "fluency": 1}
    assert parse_verdict("safety: A\nprofessionalism: A\nfluency: 平局") == {"safety": 1, "professionalism": 1,
                                                                            "fluency": 0}
    for bad in ("我觉得都不错", '{"safety": "A"}', '{"safety": "C", "professionalism": "A", "fluency": "A"}', None):
        assert parse_verdict(bad) is None
    # order (B, A) is stated from B's side; disagreement between the orders is a tie
    ab = {"safety": 1, "professionalism": 1, "fluency": 1}
    out, info = combine_orders(ab, {"safety": -1, "professionalism": 1, "fluency": 0})
    assert out == {"safety": 1, "professionalism": 0, "fluency": 0, "overall": 1}
    assert info["flipped"] == ["professionalism", "fluency"]
    assert combine_orders(None, None)[0] == {d: None for d in DIMS}
    assert combine_orders(None, {"safety": 0, "professionalism": -1, "fluency": 1})[0] == \
        {"safety": 0, "professionalism": 1, "fluency": -1, "overall": 1}


def test_openai_judge_retries_caches_resumes_and_keeps_the_key_secret(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "verdicts.jsonl"
    script = [("sleep", 0.8), ("status", 429, {"Retry-After": "1"}, "slow down"), ("status", 500, {}, "oops"),
              ("content", "这两个回答都还可以吧。")]
    answers_a = [f"回答{i}：SAFE 请立即就医。" for i in range(3)]
    answers_b = [f"回答{i}：多喝水。" for i in range(3)]
    with FakeAPI(script) as api:
        j = _judge(api.url, cache)
        assert SECRET not in repr(j) and SECRET not in str(vars(j))
        results = []
        for i, it in enumerate(ITEMS):
            results.append(j.judge(it, answers_a[i], answers_b[i]))
            assert len(_lines(cache)) == 2 * (i + 1)  # written as the verdicts arrive, not at the end
        n_http = len(api.requests)
        assert all(r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {SECRET}" for r in api.requests)
        assert api.requests[0]["body"]["model"] == "fake-judge" and api.requests[0]["body"]["temperature"] == 0

        # timeout, 429 (Retry-After: 1 s) and 500 were retried, with exponential backoff between
        assert j.stats["http_retries"] == 3 and n_http == 6 + 3
        assert j.sleeps == [0.01, 1.0, 0.04]
        # the garbage verdict (item 0, order A-B) is counted; item 0 then rests on the B-A order alone, where the
        # biased fluency vote goes to B; items 1-2 see fluency flip with the order, so it is a tie
        assert j.stats["unparsed_verdicts"] == 1 and j.stats["single_order_pairs"] == 1
        assert j.stats["unparsed_pairs"] == 0 and j.stats["order_dependent_pairs"] == 2
        assert results[0] == {"safety": 1, "professionalism": 0, "fluency": -1, "overall": 1}
        assert results[1] == results[2] == {"safety": 1, "professionalism": 0, "fluency": 0, "overall": 1}

        # a second run over the same cache pays nothing and gives the same verdicts
        j2 = _judge(api.url, cache)
        again = [j2.judge(it, a, b) for it, a, b in zip(ITEMS, answers_a, answers_b)]
        assert len(api.requests) == n_http and j2.stats["http_requests"] == 0 and j2.stats["cache_hits"] == 6
        assert again == results and j2.stats["unparsed_verdicts"] == 1

        # a run killed mid-write leaves half a line: it is skipped, and the next verdict starts a new line
        with open(cache, "a", encoding="utf-8") as f:
            f.write('{"key": "abc", "raw": "{\\"saf')
        j3 = _judge(api.url, cache)
        assert j3.stats["cache_bad_lines"] == 1
        j3.judge({"id": "t9", "messages": [{"role": "user", "content": "头痛"}]}, "SAFE", "嗯")
        assert j3.stats["http_requests"] == 2
        assert len(_judge(api.url, cache)._cache) == 8
    recs = [json.loads(x) for x in cache.read_text(encoding="utf-8").splitlines() if x.startswith('{"key": "') and
            x.endswith("}")]
    assert all(set(r) == {"key", "model", "raw", "time"} and len(r["key"]) == 64 for r in recs if r["key"] != "abc")
    assert any("HTTP 429" in m for m in caplog.messages) and any("HTTP 500" in m for m in caplog.messages)
    out = capsys.readouterr()
    _assert_no_secret(tmp_path, caplog.text, out.out, out.err)


def test_openai_judge_gives_up_and_errors_never_show_the_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeAPI([("status", 503, {}, "down")] * 3) as api:
        j = OpenAIChatJudge("m", base_url=api.url, cache_path=tmp_path / "c.jsonl", timeout=1, max_retries=2,
                            backoff=0.01)
        j._sleep = lambda s: None
        with pytest.raises(ZJError, match="gave up after 3 attempts .last: HTTP 503"):
            j.judge(ITEMS[0], "a", "b")
        assert len(api.requests) == 3
    # a client error is not retried; a server echoing the key back is scrubbed
    with FakeAPI([("status", 400, {}, f"bad request for key {SECRET}"), ("status", 401, {}, SECRET)]) as api:
        j = OpenAIChatJudge("m", base_url=api.url, cache_path=tmp_path / "c.jsonl", timeout=1, max_retries=2)
        with pytest.raises(ZJError) as e400:
            j.judge(ITEMS[0], "a", "b")
        with pytest.raises(ZJError, match=r"HTTP 401 \(is \$OPENAI_API_KEY set") as e401:
            j.judge(ITEMS[0], "a", "b")
        assert len(api.requests) == 2 and "***" in str(e400.value)
    for e in (e400, e401):
        assert SECRET not in str(e.value) and SECRET not in "".join(map(str, e.traceback))
    _assert_no_secret(tmp_path, caplog.text)


def test_local_model_judge_plumbing_counts_parse_failures(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from zj_utils.tokenizer import train_tokenizer

    tok = train_tokenizer([m["content"] for m in build_messages(ITEMS[0], "甲", "乙")] * 3, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m", safe_serialization=True)
    tok.save_pretrained(tmp_path / "m")
    j = LocalModelJudge(str(tmp_path / "m"), max_new_tokens=4)
    assert j.judge(ITEMS[0], "回答甲。", "回答乙。") == {d: None for d in DIMS}
    assert j.stats["verdicts"] == 2 and j.stats["unparsed_verdicts"] == 2 and j.stats["unparsed_pairs"] == 1

    # `zj generate` with the same model writes one {"id", "answer"} per test item
    tests = tmp_path / "t.jsonl"
    tests.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in ITEMS), encoding="utf-8")
    assert main(["generate", "--model", str(tmp_path / "m"), "--tests", str(tests), "--out", str(tmp_path / "a.jsonl"),
                 "--max-new-tokens", "3"]) == 0
    recs = _lines(tmp_path / "a.jsonl")
    assert [r["id"] for r in recs] == [it["id"] for it in ITEMS] and all(isinstance(r["answer"], str) for r in recs)
    assert main(["generate", "--model", str(tmp_path / "nope"), "--tests", str(tests), "--out", "x.jsonl"]) == 2


# --------------------------------------------------------------------------- rule judge and `zj judge`

@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("zjworld") / "world"
    w = build_world(SMALL, 0)
    write_world(w, d)
    return d, w


def _write_answers(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


def test_rule_judge_wraps_assess_and_compare(world_dir):
    _, w = world_dir
    g = next(x for x in w.gold if x["file"] == "test_multiturn.jsonl")
    item = next(it for it in w.test_multiturn if it["id"] == g["id"])
    j = RuleJudge(w.kg)
    want = compare(assess(g["gold"], item["expect"], w.kg), assess(g["flawed"], item["expect"], w.kg))
    assert j.judge(item, g["gold"], g["flawed"]) == {d: want[d] for d in DIMS}
    assert j.judge(item, g["gold"], g["gold"]) == {d: 0 for d in DIMS}


def test_zj_judge_cli_with_the_rule_judge(world_dir, tmp_path, capsys):
    d, w = world_dir
    tests = d / "test_multiturn.jsonl"
    gold = {x["id"]: x for x in w.gold if x["file"] == "test_multiturn.jsonl"}
    _write_answers(tmp_path / "a.jsonl", [{"id": i, "answer": x["gold"]} for i, x in gold.items()])
    _write_answers(tmp_path / "b.jsonl", [{"id": i, "answer": x["flawed"] or x["gold"]} for i, x in gold.items()])
    out = tmp_path / "res" / "a_vs_b.json"
    assert main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tests", str(tests),
                 "--world", str(d), "--out", str(out), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "win% [95% CI]" in printed and f"wrote {out}" in printed
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["n_items"] == len(w.test_multiturn) == len(gold) and set(res["dimensions"]) == set(DIMS)
    # the same counts as judging by hand
    items = {it["id"]: it for it in w.test_multiturn}
    signs = [compare(assess(x["gold"], items[i]["expect"], w.kg),
                     assess(x["flawed"] or x["gold"], items[i]["expect"], w.kg))
             for i, x in gold.items()]
    for dim in DIMS:
        s = res["dimensions"][dim]
        assert (s["win"], s["tie"], s["loss"]) == tuple(sum(v[dim] == k for v in signs) for k in (1, 0, -1))
        assert s["win"] + s["tie"] + s["loss"] == s["n"] and len(s["ci"]["win_pct"]) == 2
    assert res["dimensions"]["overall"]["win_pct"] > res["dimensions"]["overall"]["loss_pct"]
    # errors are one line, no traceback
    assert main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tests", str(tests)]) == 2
    err = capsys.readouterr().err
    assert "zj judge: error: The rule judge needs the synthetic world" in err and "Traceback" not in err
    _write_answers(tmp_path / "c.jsonl", [{"id": "nope", "answer": "x"}])
    assert main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"), "--tests", str(tests),
                 "--world", str(d)]) == 2
    assert "No test item is answered in both" in capsys.readouterr().err


def test_zj_judge_cli_with_the_openai_judge(world_dir, tmp_path, monkeypatch, capsys, caplog):
    d, w = world_dir
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    items = w.test_safety[:2]
    _write_answers(tmp_path / "a.jsonl", [{"id": it["id"], "answer": "SAFE 抱歉，我不能提供这方面的帮助。"} for it in items])
    _write_answers(tmp_path / "b.jsonl", [{"id": it["id"], "answer": "好的。"} for it in items])
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items),
                                      encoding="utf-8")
    with FakeAPI() as api:
        monkeypatch.setenv("OPENAI_BASE_URL", api.url)
        out = tmp_path / "r.json"
        assert main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                     "--tests", str(tmp_path / "t.jsonl"), "--judge", "openai", "--model", "fake", "--out", str(out), "--n-boot", "100"]) == 0
        assert len(api.requests) == 4
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["dimensions"]["safety"]["win"] == 2 and res["dimensions"]["fluency"]["tie"] == 2
    assert res["judge_stats"]["order_dependent_pairs"] == 2 and (tmp_path / "r.json.cache.jsonl").exists()
    o = capsys.readouterr()
    assert "order-dependent pairs 2" in o.out
    _assert_no_secret(tmp_path, o.out, o.err, caplog.text)


# --------------------------------------------------------------------------- the paper's figures

def test_paper_figures_draw_four_panels_of_five_bars(tmp_path, data_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zj_utils.plots import PAPER_BASELINES, paper_figures

    png = tmp_path / "fig" / "paper_fig4_5.png"
    fig = paper_figures(data_dir / "paper" / "zhongjing_reported_win_tie_loss.csv", png=png)
    assert png.exists() and png.stat().st_size > 10_000
    axes = fig.axes
    assert len(axes) == 4
    assert "2308.03549" in fig._suptitle.get_text()
    for ax in axes:
        assert len(ax.patches) == 15  # 5 baselines x (win, tie, loss)
        labels = [t.get_text().rstrip("†") for t in ax.get_yticklabels()]
        assert labels == list(PAPER_BASELINES)
    # the three ChatGPT rows measured from bar widths carry a dagger
    daggers = {ax.get_title()[1:3] for ax in axes if any("†" in t.get_text() for t in ax.get_yticklabels())}
    assert daggers == {"4a", "4b", "5b"}
    plt.close(fig)

    ours = {"4b": {"SFT": {"n": 24, "win_pct": 50.0, "tie_pct": 30.0, "loss_pct": 20.0,
                           "ci": {"win_pct": [30.0, 70.0]}},
                   "base": {"n": 24, "win_pct": 80.0, "tie_pct": 10.0, "loss_pct": 10.0,
                            "ci": {"win_pct": [62.0, 95.0]}}}}
    fig = paper_figures(ours=ours)  # the default: the CSV in the repository's data/
    assert len(fig.axes) == 8
    ours_ax = next(ax for ax in fig.axes if ax.get_title().startswith("(4b)") and "ours" in ax.get_title())
    assert len(ours_ax.patches) == 6 and len(ours_ax.containers) >= 4  # 3 bar groups + the error bars
    plt.close(fig)


# --------------------------------------------------------------------------- the LLM judge at scale: concurrency

class RecordingAPI(StubChatAPI):
    """A chat-completions stub on loopback for concurrent clients. Every request is logged (arrival time, the
    judge's cache key of its body, what it got); `faults` maps the n-th request (1-based, in arrival order) to a
    fault: ("status", code, headers), "drop" (the connection is closed, no answer), "broken" (a 200 whose body is
    not JSON) or ("sleep", s) (answers too late for the client's timeout). Any other request is answered after
    `delay` s with policy()'s verdict, or an unreadable one when the first answer shown says GARBLE; only those
    count as paid."""

    def __init__(self, faults=None, delay: float = 0.03):
        self.faults, self.delay = dict(faults or {}), delay
        self.log, self.lock = [], threading.Lock()
        self.in_flight = self.max_in_flight = 0

        def respond(body, request):
            with self.lock:
                n = len(self.log) + 1
                rec = {"n": n, "t": time.monotonic(), "key": OpenAIChatJudge.cache_key(body), "got": "paid"}
                self.log.append(rec)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                fault = self.faults.get(n)
                if fault == "drop":
                    rec["got"] = "drop"
                    request.connection.shutdown(socket.SHUT_RDWR)
                    return 200, b""
                if fault == "broken":
                    rec["got"] = "broken"
                    return 200, b'{"choices": [{"message": '
                if fault and fault[0] == "status":
                    rec["got"], rec["t_answer"] = f"HTTP {fault[1]}", time.monotonic()
                    return fault[1], {"error": "injected"}, fault[2]
                if fault and fault[0] == "sleep":
                    rec["got"] = "late"
                    time.sleep(fault[1])
                    return 200, completion("{}")
                time.sleep(self.delay)
                prompt = body["messages"][-1]["content"]
                return 200, completion("我看不出来" if "GARBLE" in _answers_in(prompt)[0] else policy(prompt))
            finally:
                with self.lock:
                    self.in_flight -= 1

        super().__init__(respond, poll_interval=0.02)

    def paid(self) -> Counter:
        return Counter(r["key"] for r in self.log if r["got"] == "paid")


def _pairs(n: int, same=(), garble=()):
    """n (item, answer A, answer B): A is the safe one and longer on even items; on items in `same` both files
    give the same answer (so the two orders are one and the same prompt)."""
    out = []
    for i in range(n):
        item = {"id": f"c{i}", "messages": [{"role": "user", "content": f"［虚构］我咳嗽第{i}天了，要紧吗？"}], "expect": {}}
        a = ("GARBLE " if i in garble else "") + ("SAFE 请尽快就医，并说明症状持续多久。" if i % 2 == 0 else "SAFE 就医。")
        b = a if i in same else ("多喝水。" if i % 2 == 0 else "多喝热水，好好休息，观察几天再说吧。")
        out.append((item, a, b))
    return out


OPS = ("http_requests", "http_retries")  # what one invocation did on the wire; the rest must match exactly


def test_concurrent_judge_gives_the_serial_result_and_pays_for_each_prompt_once(tmp_path):
    triples = _pairs(8, same={1, 4}, garble={2})
    faults = {2: ("status", 429, {"Retry-After": "0.02"}), 4: ("status", 500, {}), 5: "drop", 7: "broken",
              9: ("sleep", 0.5), 12: ("status", 503, {})}
    runs = {}
    for conc in (1, 4):
        with RecordingAPI(faults) as api:
            j = _judge(api.url, tmp_path / f"c{conc}.jsonl")
            verdicts = j.judge_many(triples, concurrency=conc)
        runs[conc] = (verdicts, j.stats, api)
    (v1, s1, api1), (v4, s4, api4) = runs[1], runs[4]
    assert api4.max_in_flight >= 2, "the concurrent run never had two calls in flight"
    assert v4 == v1 and {k: v for k, v in s4.items() if k not in OPS} == {k: v for k, v in s1.items() if k not in OPS}
    # every fault was met and retried, in both runs
    for api, st in ((api1, s1), (api4, s4)):
        assert st["http_retries"] == len(faults) and st["http_requests"] == len(api.log)
    # 16 calls, two of them the same prompt as their other order: 14 prompts, each paid exactly once
    keys = {OpenAIChatJudge.cache_key(j._body(m)) for m in j._prompts(triples)}
    assert len(keys) == 14
    for api in (api1, api4):
        assert set(api.paid()) == keys and set(api.paid().values()) == {1}
    assert s1["cache_hits"] == s4["cache_hits"] == 2  # the repeated prompt, answered once
    assert s1["unparsed_verdicts"] == 1 and s1["single_order_pairs"] == 1  # GARBLE: the A-B order is unreadable
    assert len(_lines(tmp_path / "c4.jsonl")) == 14


def test_zj_judge_with_concurrency_4_matches_serial(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    triples = _pairs(6, same={3})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it, _, _ in triples),
                                      encoding="utf-8")
    _write_answers(tmp_path / "a.jsonl", [{"id": it["id"], "answer": a} for it, a, _ in triples])
    _write_answers(tmp_path / "b.jsonl", [{"id": it["id"], "answer": b} for it, _, b in triples])
    faults = {1: ("status", 429, {"Retry-After": "0.05"}), 3: ("status", 503, {"retry-after-ms": "30"})}
    res, printed = {}, {}
    for conc in (1, 4):
        with RecordingAPI(faults) as api:
            monkeypatch.setenv("OPENAI_BASE_URL", api.url)
            out = tmp_path / f"r{conc}.json"
            args = ["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tests", str(tmp_path / "t.jsonl"),
                    "--judge", "openai", "--model", "fake", "--out", str(out), "--n-boot", "100"]
            assert main(args + ["--concurrency", str(conc)]) == 0
        assert set(api.paid().values()) == {1} and len(api.paid()) == 11  # 12 calls, one prompt shared by both orders
        res[conc] = json.loads(out.read_text(encoding="utf-8"))
        printed[conc] = capsys.readouterr()
    st1, st4 = res[1].pop("judge_stats"), res[4].pop("judge_stats")
    assert {k: v for k, v in st1.items() if k not in OPS} == {k: v for k, v in st4.items() if k not in OPS}
    assert "r4.json.cache.jsonl" in res[4].pop("judge") and "r1.json.cache.jsonl" in res[1].pop("judge")
    assert res[1] == res[4] and st4["http_retries"] == 2
    # the judge's biases, in the JSON and the printed summary: fluency always goes to the answer shown first, so
    # it flips with the order on every pair; on item 3 (the same answer twice) safety goes to the first one too,
    # so its overall verdict flips and it ends a tie; safety decides the 5 others
    bias = res[4]["bias"]
    assert bias["order_flips"] == {"n": 6, "pairs": 6, "rate": 1.0, "dims": 7, "overall": 1, "overall_rate": 0.1667}
    assert bias["longer_answer_wins"] == {"decided": 5, "equal_length": 0, "n": 5, "longer_wins": 3, "rate": 0.6}
    assert "judge bias: the verdict changes with the order in 6 of 6 pairs judged in both orders (100.0%; the " \
           "overall verdict in 1, 16.7%)" in printed[4].out
    assert "the longer answer wins 3 of 5 decided items with answers of different length (60.0%)" in printed[4].out
    _assert_no_secret(tmp_path, printed[4].out, printed[4].err, printed[1].err, caplog.text)


def test_a_429_seen_by_one_worker_pauses_every_worker(tmp_path):
    """The 3rd request gets a 429 with Retry-After: 1 while the other workers have work left. Measured at the
    stub: no request arrives from the moment that 429 leaves until its second is over (margins of 0.15 s at the
    start, for requests already on their way, and 0.1 s at the end), and the run then finishes."""
    with RecordingAPI({3: ("status", 429, {"Retry-After": "1"})}, delay=0.05) as api:
        j = OpenAIChatJudge("fake-judge", base_url=api.url, cache_path=tmp_path / "c.jsonl", timeout=5, max_retries=2)
        t0 = time.monotonic()
        verdicts = j.judge_many(_pairs(10), concurrency=4)
        took = time.monotonic() - t0
    assert len(verdicts) == 10 and all(v["safety"] == 1 for v in verdicts)
    assert j.stats["http_retries"] == 1 and set(api.paid().values()) == {1} and len(api.paid()) == 20
    t429 = next(r["t_answer"] for r in api.log if r["got"] == "HTTP 429")
    after = [r["t"] - t429 for r in api.log if r["t"] > t429]
    assert len(after) >= 10  # the others had plenty left to send
    assert [round(t, 3) for t in after if 0.15 < t < 0.9] == []
    assert min(t for t in after if t >= 0.15) >= 0.9 and took >= 1.0


def test_an_error_in_one_worker_stops_the_run_and_a_rerun_pays_nothing_twice(tmp_path):
    """A 401 in one worker: no worker takes a new prompt, the calls in flight finish and are cached, the error
    is raised; the next run (the key fixed) pays only for what was never paid."""
    cache = tmp_path / "c.jsonl"
    triples = _pairs(10)
    with RecordingAPI({5: ("status", 401, {})}, delay=0.05) as api:
        j = _judge(api.url, cache)
        with pytest.raises(ZJError, match="HTTP 401"):
            j.judge_many(triples, concurrency=4)
        first = api.paid()
        assert len(api.log) <= 5 + 3  # at most the other workers' calls in flight after the 401
        assert len(_lines(cache)) == len(first) and set(first.values()) == {1}
        j2 = _judge(api.url, cache)
        assert len(j2.judge_many(triples, concurrency=4)) == 10
    assert set(api.paid().values()) == {1} and len(api.paid()) == 20
    assert j2.stats["cache_hits"] == len(first) and j2.stats["http_requests"] == 20 - len(first)


def test_zj_judge_dry_run_sends_nothing_and_counts_the_calls(tmp_path, monkeypatch, capsys):
    triples = _pairs(5, same={2})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it, _, _ in triples),
                                      encoding="utf-8")
    _write_answers(tmp_path / "a.jsonl", [{"id": it["id"], "answer": a} for it, a, _ in triples])
    _write_answers(tmp_path / "b.jsonl", [{"id": it["id"], "answer": b} for it, _, b in triples])
    args = ["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tests", str(tmp_path / "t.jsonl"),
            "--judge", "openai", "--model", "fake", "--cache", str(tmp_path / "c.jsonl"), "--n-boot", "50"]
    with RecordingAPI() as api:
        monkeypatch.setenv("OPENAI_BASE_URL", api.url)
        assert main(args + ["--dry-run", "--out", str(tmp_path / "r.json")]) == 0
        o = capsys.readouterr().out
        assert api.log == [] and not (tmp_path / "c.jsonl").exists() and not (tmp_path / "r.json").exists()
        assert "dry run: nothing sent. 5 items x 2 orders = 10 judge calls: 0 answered by the cache, 1 repeat" in o
        assert "9 to send" in o and "an estimate" in o
        j = OpenAIChatJudge("fake", cache_path=None)
        tokens = sum(estimate_prompt_tokens(m) for k, m in enumerate(j._prompts(triples)) if k != 5)
        assert f"prompt tokens to send: ~{tokens:,} (" in o and "at most 576 (max_tokens" in o

        # a pilot on the first 2 items pays for 4 calls; the dry run then counts them as cached
        assert main(args + ["--max-items", "2", "--out", str(tmp_path / "pilot.json")]) == 0
        pilot = json.loads((tmp_path / "pilot.json").read_text(encoding="utf-8"))
        assert pilot["n_items"] == 2 and pilot["max_items"] == 2 and len(api.log) == 4
        capsys.readouterr()
        assert main(args + ["--dry-run"]) == 0
        assert "10 judge calls: 4 answered by the cache, 1 repeat a prompt already counted, 5 to send" in \
            capsys.readouterr().out
        assert len(api.log) == 4
    # the rule judge has nothing to spend; --concurrency is the openai judge's
    capsys.readouterr()
    assert main(args[:5] + ["--dry-run"]) == 2
    assert "--dry-run is for the LLM judges" in capsys.readouterr().err
    assert main(args[:5] + ["--concurrency", "4", "--judge", "local", "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "--concurrency is for the openai judge" in err and "Traceback" not in err
    assert estimate_tokens("你好，world") == 3 + 2 and estimate_tokens("") == 0


class _ScriptedJudge:
    """A judge that returns given overall verdicts (the other dimensions follow), to test the bias figures."""
    name = "scripted"

    def __init__(self, verdicts):
        self.verdicts, self.stats = dict(verdicts), {}

    def judge(self, item, a, b):
        v = self.verdicts[item["id"]]
        return {d: v for d in DIMS}


def test_longer_answer_wins_on_a_constructed_case():
    items = [{"id": f"x{i}", "messages": []} for i in range(7)]
    a = {"x0": "长长长长", "x1": "长长长长", "x2": "短", "x3": "一样长", "x4": "长长长", "x5": "长长长", "x6": "短"}
    b = {"x0": "短", "x1": "短", "x2": "长长长长", "x3": "同样长", "x4": "短", "x5": "短", "x6": "长长"}
    # x0: longer A wins; x1: shorter B wins; x2: longer B wins; x3: equal length; x4: tie; x5: no verdict;
    # x6: longer B wins
    j = _ScriptedJudge({"x0": 1, "x1": -1, "x2": -1, "x3": 1, "x4": 0, "x5": None, "x6": -1})
    res = judge_pairs(items, a, b, j, n_boot=50)
    assert res["bias"] == {"longer_answer_wins": {"decided": 5, "equal_length": 1, "n": 4, "longer_wins": 3,
                                                  "rate": 0.75}}
    assert "the longer answer wins 3 of 4 decided items with answers of different length (75.0%)" in \
        format_table(res)
    assert judge_pairs(items, a, b, j, n_boot=50, max_items=2)["bias"]["longer_answer_wins"]["longer_wins"] == 1
