"""The widgets' logic without a browser: ranking with ties, save-as-you-go, reload after a crash, the ranking
tool's formats, feeding the reward stage; the side-by-side chat's streaming, per-model history and judge.
The views are driven here too, by setting widget values and clicking buttons in Python."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zj_utils.common import ZJError
from zj_utils.data import DataError, write_jsonl
from zj_utils.rankings import load_ranking_output
from zj_utils.ranking_store import load_candidates, normalize_ranks, read_saved_rankings
from zj_utils.reward import human_rankings, rankings_to_pairs
from zj_utils.widgets import (ChatModel, ChatSession, ChatWidget, RankingSession, RankingWidget,
                              annotation_rule_lines, load_chat_model, pairwise_agreement)
from zj_utils import rubric as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tool_input(data_dir):
    return data_dir / "rlhf_label_tool" / "input_file.json"


def rm_rankings_file(path, n=3):
    """A file in the shape the reward stage writes to OUT/rm/rankings.jsonl (rule annotator's ranks)."""
    recs = [{"id": f"rank-{i:05d}", "messages": [{"role": "user", "content": f"［虚构］医生，我发热{i}天了？"}],
             "responses": [f"答{i}-{k}。" for k in range(4)], "ranks": [1, 2, 2, 4], "annotator": "rule"}
            for i in range(n)]
    write_jsonl(path, recs)
    return path


# ------------------------------------------------------------------------------------------- ranks and rule

def test_ranks_with_ties_become_competition_ranks():
    assert normalize_ranks([1, 1, 2, 3]) == [1, 1, 3, 4]
    assert normalize_ranks([2, 1, 2, 1]) == [3, 1, 3, 1]
    assert normalize_ranks([4, 4, 4, 4]) == [1, 1, 1, 1]
    assert normalize_ranks([4, 3, 2, 1]) == [4, 3, 2, 1]
    for bad in ([1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 5], [1, 2, True, 3], [1, 2, "3", 4]):
        with pytest.raises(ZJError):
            normalize_ranks(bad)


def test_agreement_counts_pairs_in_the_same_order():
    assert pairwise_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == {"pairs": 6, "same": 6, "rate": 1.0}
    assert pairwise_agreement([1, 2, 3, 4], [4, 3, 2, 1])["same"] == 0
    assert pairwise_agreement([1, 1, 3, 4], [1, 2, 3, 4])["same"] == 5  # the tie disagrees once


def test_rule_text_is_built_from_the_rubric():
    text = "\n".join(annotation_rule_lines())
    for d in R.DIMENSIONS:
        assert d.zh in text
    for a in R.ABILITIES:
        assert a.zh in text
    assert " > ".join(R.DIMENSION_NAMES) in text
    assert text.index(R.DIMENSIONS[0].zh) < text.index(R.DIMENSIONS[-1].zh)


# ------------------------------------------------------------------------------------------- ranking session

def test_candidates_from_the_tool_input_and_from_the_reward_stage(tool_input, tmp_path):
    tool = load_candidates(tool_input)
    assert len(tool) == len(json.loads(tool_input.read_text(encoding="utf-8")))
    assert all(len(c["responses"]) == 4 and c["messages"][-1]["role"] == "user" for c in tool)
    assert tool[0]["rule_ranks"] is None
    rm = load_candidates(rm_rankings_file(tmp_path / "rankings.jsonl"))
    assert [c["rule_ranks"] for c in rm] == [[1, 2, 2, 4]] * 3


@pytest.mark.parametrize("line,where", [
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}], "responses": ["1", "2", "3"]}', "'responses'"),
    ('{"id": "a", "messages": [{"role": "assistant", "content": "x"}], "responses": ["1", "2", "3", "4"]}',
     "'messages'"),
    ('{"messages": [{"role": "user", "content": "x"}], "responses": ["1", "2", "3", "4"]}', "'id'"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}], "responses": ["1", "2", "3", "4"], '
     '"ranks": [1, 9, 2, 3]}', "'ranks'"),
    ('{"id": "a", "messages": [', "not valid JSON"),
])
def test_bad_candidates_name_the_line_and_field(tmp_path, line, where):
    p = tmp_path / "c.jsonl"
    good = '{"id": "ok", "messages": [{"role": "user", "content": "x"}], "responses": ["1", "2", "3", "4"]}'
    p.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"c\.jsonl:line 2: .*{where}"):
        load_candidates(p)
    (tmp_path / "x.tsv").write_text("id\tquery\n", encoding="utf-8")
    with pytest.raises(ZJError, match="TSV output holds answers already ranked"):
        load_candidates(tmp_path / "x.tsv")


def test_every_ranking_is_on_disk_before_rank_returns(tool_input, tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    s = RankingSession.from_file(tool_input, tmp_path / "human" / "rankings.jsonl")
    first = s.current["id"]
    rec = s.rank([1, 1, 2, 3])  # A = B > C > D
    assert rec["ranks"] == [1, 1, 3, 4] and rec["annotator"] == "human"
    assert synced, "the ranking was not fsync'ed"
    lines = (tmp_path / "human" / "rankings.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in lines] == [first]
    assert s.current["id"] != first and s.done == 1


def test_reload_after_a_killed_kernel_continues_with_the_next_unranked(tool_input, tmp_path):
    save = tmp_path / "rankings.jsonl"
    # A separate process ranks two prompts and is then killed hard, as a dying kernel would be.
    code = textwrap.dedent(f"""
        import os, signal
        from zj_utils.widgets import RankingSession
        s = RankingSession.from_file({str(tool_input)!r}, {str(save)!r})
        s.rank([2, 1, 1, 4])
        s.rank([1, 2, 3, 4])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    s = RankingSession.from_file(tool_input, save)
    ids = [c["id"] for c in s.candidates]
    assert s.done == 2 and s.current["id"] == ids[2]
    assert s.saved_ranks(ids[0]) == [3, 1, 1, 4] and s.saved_ranks(ids[1]) == [1, 2, 3, 4]


def test_an_incomplete_last_line_is_reported_then_repaired(tool_input, tmp_path):
    save = tmp_path / "rankings.jsonl"
    s = RankingSession.from_file(tool_input, save)
    s.rank([1, 2, 3, 4])
    with open(save, "a", encoding="utf-8") as f:
        f.write('{"id": "1", "messages": [{"role": "us')  # the write the kernel died in
    with pytest.raises(DataError, match=r"rankings\.jsonl:line 2: .*incomplete"):
        read_saved_rankings(save)
    with pytest.warns(UserWarning, match="line 2: an incomplete ranking"):
        s2 = RankingSession.from_file(tool_input, save)
    assert s2.done == 1 and len(read_saved_rankings(save)) == 1
    s2.rank([4, 3, 2, 1])
    assert len(read_saved_rankings(save)) == 2


def test_a_damaged_save_file_is_an_error_naming_the_line(tool_input, tmp_path):
    save = tmp_path / "r.jsonl"
    RankingSession.from_file(tool_input, save).rank([1, 2, 3, 4])
    rec = json.loads(save.read_text(encoding="utf-8"))
    with open(save, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec | {"ranks": [1, 2, 3]}) + "\n")
    for load in (lambda: RankingSession.from_file(tool_input, save), lambda: read_saved_rankings(save)):
        with pytest.raises(DataError, match=r"r\.jsonl:line 2: field 'ranks'"):
            load()


def test_reranking_keeps_the_latest_and_skip_and_go(tool_input, tmp_path):
    save = tmp_path / "r.jsonl"
    s = RankingSession.from_file(tool_input, save)
    ids = [c["id"] for c in s.candidates]
    s.rank([1, 2, 3, 4])
    s.skip()
    assert s.current["id"] == ids[2]
    s.go(0)
    s.rank([4, 3, 2, 1])
    assert s.current["id"] == ids[1]  # back to the first unranked after the one re-ranked
    assert len(save.read_text().splitlines()) == 2
    saved = read_saved_rankings(save)
    assert [r["id"] for r in saved] == [f"human-{ids[0]}"] and saved[0]["ranks"] == [4, 3, 2, 1]
    with pytest.raises(ZJError, match="no valid rank"):
        s.rank([1, 2, 0, 3])
    assert s.done == 1


def test_finishing_every_prompt(tmp_path):
    s = RankingSession(load_candidates(rm_rankings_file(tmp_path / "c.jsonl", n=2)), tmp_path / "r.jsonl")
    agree = s.rank([1, 2, 2, 4])["agreement_with_rule"]
    assert agree == {"pairs": 6, "same": 6, "rate": 1.0}
    s.rank([1, 1, 1, 1])
    assert s.current is None and s.done == 2
    with pytest.raises(ZJError, match="Every prompt is ranked"):
        s.rank([1, 2, 3, 4])


# ------------------------------------------------------------------------------------------- formats and zj rm

def test_export_to_tool_tsv_reads_back_and_feeds_zj_rm(tool_input, tmp_path):
    save = tmp_path / "r.jsonl"
    # the real sample holds records with two identical answers (a tie the TSV can express); take distinct ones
    distinct = [c for c in load_candidates(tool_input) if len(set(c["responses"])) == 4]
    s = RankingSession(distinct, save)
    c0, c1 = s.candidates[0], s.candidates[1]
    s.rank([3, 1, 2, 4])  # B > C > A > D, no ties
    s.rank([1, 1, 3, 4])  # A = B > C > D
    with pytest.warns(UserWarning, match="1 tied pair"):
        info = s.export_tsv(tmp_path / "out.tsv")
    assert info == {"rows": 2, "ties_not_expressible": 1, "path": str(tmp_path / "out.tsv")}
    back = load_ranking_output(tmp_path / "out.tsv")
    r = c0["responses"]
    assert back[0]["ranked"] == [r[1], r[2], r[0], r[3]] and back[0]["messages"] == c0["messages"]
    assert back[1]["id"] == c1["id"]
    # `zj rm --rankings FILE` calls human_rankings: the TSV, and the JSONL with its tie kept.
    tsv = human_rankings(tmp_path / "out.tsv")
    jsonl = human_rankings(save)
    assert [x["annotator"] for x in tsv + jsonl] == ["human"] * 4
    assert len(rankings_to_pairs(tsv[:1])) == 6 and len(rankings_to_pairs(jsonl[:1])) == 6
    assert len(rankings_to_pairs(tsv[1:])) == 6  # the TSV lost the tie: A over B became a pair
    pairs = rankings_to_pairs(jsonl[1:])
    assert len(pairs) == 5
    chosen_rejected = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    r1 = c1["responses"]
    assert (r1[0], r1[1]) not in chosen_rejected and (r1[1], r1[0]) not in chosen_rejected
    assert (r1[1], r1[2]) in chosen_rejected


def test_zj_rm_trains_on_widget_rankings_mixed_with_tool_and_rule_rankings(tool_input, tmp_path):
    """The real `zj rm --rankings` on the smoke preset, with stand-in pre-trained and SFT models (small random
    LLaMAs): the widget's JSONL and its TSV export join the rule annotator's rankings in one reward model."""
    from zj_utils.cli import main
    from zj_utils.data import load_jsonl
    from zj_utils.stages import run_world
    from zj_utils.presets import get_preset

    out = tmp_path / "run"
    run_world(get_preset("smoke"), out, 0)
    distinct = [c for c in load_candidates(tool_input) if len(set(c["responses"])) == 4][:3]
    texts = [json.dumps(r, ensure_ascii=False) for r in load_jsonl(out / "world" / "rank_prompts.jsonl")]
    tok = char_tokenizer(texts + [json.dumps(c, ensure_ascii=False) for c in distinct])
    for stage in ("pretrain", "sft"):
        tiny_llama(tok, 0, hidden=64).save_pretrained(out / stage / "merged", safe_serialization=True)
        tok.save_pretrained(out / stage / "merged")
    s = RankingSession(distinct, tmp_path / "human.jsonl")
    s.rank([1, 1, 3, 4])
    s.rank([4, 3, 2, 1])
    s.rank([2, 1, 3, 4])
    with pytest.warns(UserWarning, match="1 tied pair"):
        s.export_tsv(tmp_path / "human.tsv")
    assert main(["rm", "--preset", "smoke", "--out", str(out), "--seed", "0", "--set", "rm.max_prompts=4",
                 "--rankings", str(tmp_path / "human.jsonl"), "--rankings", str(tmp_path / "human.tsv")]) == 0
    metrics = json.loads((out / "rm" / "metrics.json").read_text())
    rankings = load_jsonl(out / "rm" / "rankings.jsonl")
    rule = [r for r in rankings if r["annotator"] == "rule"]
    human = {r["id"]: r["ranks"] for r in rankings if r["annotator"] == "human"}
    assert metrics["rankings"] == len(rule) + 6 == len(rankings) and metrics["steps"] > 0
    ids = [c["id"] for c in distinct]
    assert human[f"human-{ids[0]}"] == [1, 1, 3, 4]  # the JSONL keeps the tie
    assert human[f"tool-{ids[1]}"] == [1, 2, 3, 4]  # the TSV holds answers best to worst
    assert metrics["pairs"] == len(rankings_to_pairs(rankings))


def test_widget_tool_and_rule_rankings_mix(tool_input, data_dir, tmp_path):
    s = RankingSession.from_file(tool_input, tmp_path / "r.jsonl")
    s.rank([1, 2, 3, 4])
    s.export_input(tmp_path / "in.json")
    assert len(load_candidates(tmp_path / "in.json")) == len(s.candidates)
    rule = [{k: v for k, v in json.loads(x).items()} for x in
            rm_rankings_file(tmp_path / "rule.jsonl").read_text().splitlines()]
    mixed = rule + human_rankings(data_dir / "rlhf_label_tool" / "output_result.tsv") + \
        human_rankings(tmp_path / "r.jsonl")
    ids = [m["id"] for m in mixed]
    assert len(set(ids)) == len(ids)
    assert {m["annotator"] for m in mixed} == {"rule", "human"}
    pairs = rankings_to_pairs(mixed)
    assert {p["prompt_id"] for p in pairs} >= {f"human-{s.candidates[0]['id']}", "rank-00000"}


# ------------------------------------------------------------------------------------------- ranking view

def test_ranking_widget_saves_on_click_and_shows_the_rule(tool_input, tmp_path):
    w = RankingWidget.from_file(tool_input, tmp_path / "r.jsonl")
    first = w.session.current
    assert first["messages"][-1]["content"][:10] in w.dialogue.value
    assert R.DIMENSIONS[0].zh in w.view.children[1].children[1].value
    assert w.save_btn.disabled
    for sel, v in zip(w.selects, [2, 1, 2, 4]):
        sel.value = v
    assert not w.save_btn.disabled
    w.save_btn.click()
    assert read_saved_rankings(tmp_path / "r.jsonl")[0]["ranks"] == [2, 1, 2, 4]
    assert "Ranked 1 of" in w.header.value and w.session.current["id"] != first["id"]
    assert all(sel.value == 0 for sel in w.selects) and w.save_btn.disabled
    w.back_btn.click()
    assert w.session.current["id"] == first["id"] and [s.value for s in w.selects] == [2, 1, 2, 4]


# ------------------------------------------------------------------------------------------- chat

CASE = {"id": "tmt-x", "messages": [{"role": "user", "content": "［虚构］医生您好，我最近发热、咳嗽，是怎么回事？"}],
        "expect": {"should_ask": "湖水", "disease": "岚砂热"}}
KG = {"diseases": [
    {"id": "D00", "name": "岚砂热", "department": "呼吸科", "symptoms": ["发热", "咳嗽"],
     "key_question": {"topic": "湖水"}, "exam": "岚氏荧光检测", "drug": "珀芷宁", "alt_drug": "苓霁素",
     "contraindication": {"condition": "孕期"}},
    {"id": "D01", "name": "雾砂热", "department": "呼吸科", "symptoms": ["咳嗽", "发热"],
     "key_question": {"topic": "山洞"}, "exam": "雾氏检测", "drug": "砚璃泰", "alt_drug": "芷漪素",
     "contraindication": {"condition": "孕期"}}]}
ASK = "岚砂热和雾砂热都有可能。请问您最近是否接触过湖水？"
TELL = "是岚砂热，建议做岚氏荧光检测，首选珀芷宁治疗。"
CONCLUDE = "是雾砂热，建议用砚璃泰。"


def char_tokenizer(texts):
    """Char-level tokenizer (every CJK character one token), with the project's chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from zj_utils.tokenizer import BOS, BOT, CHAT_TEMPLATE, EOS, HUMAN, PAD, UNK

    chars = sorted(set("".join(texts)) | set("，。？、：:\n"))
    vocab = {t: i for i, t in enumerate([PAD, BOS, EOS, UNK, HUMAN, BOT] + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([PAD, BOS, EOS, UNK, HUMAN, BOT])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                 unk_token=UNK, additional_special_tokens=[HUMAN, BOT])
    hf.chat_template = CHAT_TEMPLATE
    return hf


TEXTS = [CASE["messages"][0]["content"], ASK, TELL, CONCLUDE, "是的，上周在湖里游过泳。", "谢谢医生"]


def tiny_llama(tok, seed, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      initializer_range=0.5)
    return LlamaForCausalLM(cfg).eval()


class Scripted(torch.nn.Module):
    """A stand-in 'model' that says scripted answers, one per turn, token by token into the streamer, with
    generate's call shape: for checking what the judge and the history make of known answers."""

    def __init__(self, tok, answers):
        super().__init__()
        self.tok, self.answers, self.w = tok, list(answers), torch.nn.Parameter(torch.zeros(1))
        self.prompts = []

    def generate(self, input_ids, attention_mask=None, streamer=None, max_new_tokens=None, **kw):
        self.prompts.append(self.tok.decode(input_ids[0]))
        new = torch.tensor([self.tok(self.answers.pop(0), add_special_tokens=False)["input_ids"]
                            + [self.tok.eos_token_id]])
        streamer.put(input_ids)
        for t in new[0]:
            streamer.put(t[None])
        streamer.end()
        return torch.cat([input_ids, new], 1)


def test_streaming_yields_token_by_token_and_matches_plain_generation(tmp_path):
    from zj_utils.inference import generate_chat

    tok = char_tokenizer(TEXTS)
    model = tiny_llama(tok, 0)
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    tok.save_pretrained(tmp_path / "m")
    m = load_chat_model("sft", tmp_path / "m")
    s = ChatSession([m], max_new_tokens=12)
    s.add_patient("发热咳嗽")
    pieces = list(s.stream_reply("sft"))
    answer = s.histories["sft"][-1]["content"]
    want = generate_chat(m.model, m.tokenizer, [[{"role": "user", "content": "发热咳嗽"}]], 12)[0][0]
    assert answer == want and answer
    assert len(pieces) > 1 and "".join(pieces).strip() == answer


def test_history_is_kept_per_model_and_reset(tmp_path):
    tok = char_tokenizer(TEXTS)
    a = ChatModel("A", Scripted(tok, [ASK, TELL]), tok)
    b = ChatModel("B", Scripted(tok, [CONCLUDE, CONCLUDE]), tok)
    s = ChatSession([a, b], kg=KG)
    first = s.start_case(CASE)
    assert s.send(first) == {"A": ASK, "B": CONCLUDE}
    s.send("是的，上周在湖里游过泳。")
    assert [m["content"] for m in s.histories["A"]] == [first, ASK, "是的，上周在湖里游过泳。", TELL]
    assert [m["content"] for m in s.histories["B"]][1::2] == [CONCLUDE, CONCLUDE]
    # each model saw its own earlier answer, not the other's
    assert ASK in a.model.prompts[1] and CONCLUDE not in a.model.prompts[1]
    assert CONCLUDE in b.model.prompts[1] and ASK not in b.model.prompts[1]
    # the judge: A asked the key question first (proactive), then concluded right; B concluded wrong at once
    va, vb = s.verdicts["A"], s.verdicts["B"]
    assert va[0]["proactive"] and va[0]["asks_question"] and va[0]["expect"]["should_ask"] == "湖水"
    assert "should_ask" not in va[1]["expect"] and va[1]["professionalism"] == pytest.approx(1.0)
    assert not vb[0]["proactive"] and "concluded without asking the key question" in vb[0]["reasons"]
    assert any("wrong disease" in r for r in vb[1]["reasons"])
    assert va[0]["professionalism"] > vb[0]["professionalism"]
    s.reset()
    assert s.histories == {"A": [], "B": []} and s.expect == {}


def test_a_failed_turn_is_undone_for_every_model():
    tok = char_tokenizer(TEXTS)
    s = ChatSession([ChatModel("A", Scripted(tok, [ASK]), tok), ChatModel("B", Scripted(tok, []), tok)], kg=KG)
    with pytest.raises(IndexError):
        s.send("发热")  # B has nothing to say: its generate raises inside the thread
    assert s.histories == {"A": [], "B": []} and s.verdicts == {"A": [], "B": []}
    with pytest.raises(ZJError, match="empty"):
        s.add_patient("  ")


def test_chat_widget_streams_into_columns_and_resets():
    tok = char_tokenizer(TEXTS)
    s = ChatSession([ChatModel("sft", Scripted(tok, [ASK]), tok), ChatModel("ppo", Scripted(tok, [CONCLUDE]), tok)],
                    kg=KG)
    w = ChatWidget(s, cases=[CASE])
    seen = []
    w.columns["sft"].observe(lambda ch: seen.append(ch["new"]), names="value")
    w.case.value = CASE["id"]
    assert w.box.value == CASE["messages"][0]["content"]
    w.send_btn.click()
    assert ASK in w.columns["sft"].value and CONCLUDE in w.columns["ppo"].value
    assert "proactive inquiry" in w.judged["sft"].value and "proactive inquiry" not in w.judged["ppo"].value
    assert sum(ASK[:k] in v and ASK not in v for v in seen for k in (5, 10)) >= 2  # partial answers were shown
    assert "Turn 1 answered" in w.status.value and w.box.value == ""
    w.reset_btn.click()
    assert "no messages yet" in w.columns["sft"].value and s.expect == CASE["expect"]
    assert w.box.value == CASE["messages"][0]["content"]  # the same case, from its start
    w.case.value = ""
    assert s.expect == {} and w.box.value == CASE["messages"][0]["content"]


def test_reward_split_keeps_a_prompt_ranked_twice_on_one_side():
    """A person's ranking of a prompt the annotator also ranked (another id) must not leak into dev or train."""
    from zj_utils.reward import split_by_prompt

    rule = [{"id": f"rank-{i:03d}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
    human = [{"id": f"human-{i:03d}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(0, 40, 3)]
    for seed in range(5):
        dev = split_by_prompt(rule + human, 0.25, seed)
        assert 0 < len(dev) < 54
        for h in human:
            twin = f"rank-{h['id'][6:]}"
            assert (h["id"] in dev) == (twin in dev)
        # without human rankings the split is the plain split of the annotator's prompt ids (as before)
        only_rule = split_by_prompt(rule, 0.25, seed)
        assert len(only_rule) == 10
