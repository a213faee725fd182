"""Gaps that mutation testing (benchmarks/mutation.py, docs/MUTATION.md) found: changes to the code that every
other test let through. Each test here is cheap and names the mutant it kills."""
import numpy as np
import pytest

from zj_utils.stats import bootstrap_ci, mean_ci, win_tie_loss


# --------------------------------------------------------------------------- stats

def _resampled(values, n_boot: int, seed: int) -> np.ndarray:
    """The resamples bootstrap_ci and mean_ci draw: the same generator, the same call."""
    v = np.asarray(values)
    return v[np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))]


def test_net_pct_with_a_margin_of_more_than_one():
    """net_pct = 100 * (win - loss) / n; with win - loss = +-1, as in test_stats.py, 100 / (win - loss) / n is the
    same number (mutant: `100 * (...)` -> `100 / (...)`)."""
    assert win_tie_loss([1, 1, 1, 0, -1])["net_pct"] == 40.0
    assert win_tie_loss([-1, -1, -1, 1])["net_pct"] == -50.0


def test_bootstrap_ci_is_the_percentile_interval_of_its_resamples_to_two_decimals():
    """Exactly the 2.5th and 97.5th percentiles of the resampled shares, rounded to 2 decimals, with the defaults
    n_boot=1000, seed=0, alpha=0.05 (mutants: 100 -> 101 in the percentile, round(.., 2) -> 3, the defaults)."""
    signs = [1] * 23 + [0] * 9 + [-1] * 17
    boot = _resampled(signs, 1000, 0)
    win, tie, loss = ((boot == v).mean(axis=1) * 100 for v in (1, 0, -1))
    want = {k: [round(float(x), 2) for x in np.percentile(s, [2.5, 97.5])]
            for k, s in zip(("win_pct", "tie_pct", "loss_pct", "net_pct"), (win, tie, loss, win - loss))}
    assert bootstrap_ci(signs) == want
    assert bootstrap_ci(signs, n_boot=1000, seed=0, alpha=0.05) == want


def test_mean_ci_is_the_percentile_interval_of_its_resamples_to_four_decimals():
    """The same for mean_ci, rounded to 4 decimals (mutants: 100 -> 101, 2 -> 3 in the percentiles,
    round(.., 4) -> 5, the defaults n_boot=1000 and seed=0)."""
    values = [0.1, 0.7, 0.25, 1.0, 0.0, 0.33, 0.9, 0.5, 0.61, 0.05, 0.77]
    means = _resampled(values, 1000, 0).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    want = {"n": 11, "mean": round(float(np.mean(values)), 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}
    assert mean_ci(values) == want
    assert want["mean"] != round(float(np.mean(values)), 5)  # the data need the 4th decimal's rounding


def test_two_level_bootstrap_is_the_percentile_interval_of_seed_then_item_resamples():
    """Seeds drawn with replacement, then items within each drawn seed, from one generator seeded 0, 2000 times;
    the 2.5th/97.5th percentiles of the means, everything rounded to 4 decimals (mutants: the defaults n_boot=2000
    and seed=0, 100 -> 101 and 2 -> 3 in the percentiles, round(.., 4) -> 5). The coverage and scipy comparisons
    in test_stats_level.py allow Monte Carlo error, so they cannot see these."""
    from zj_utils.ablations import two_level_bootstrap

    gen = np.random.default_rng(12)
    per_seed = [gen.normal(size=n) for n in (9, 14, 11)]
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(2000):
        draw = rng.integers(0, 3, size=3)
        boots.append(np.mean([per_seed[i][rng.integers(0, per_seed[i].size, per_seed[i].size)].mean()
                              for i in draw]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    got = two_level_bootstrap(per_seed)
    assert got == {"mean": round(float(np.mean([v.mean() for v in per_seed])), 4),
                   "ci": [round(float(lo), 4), round(float(hi), 4)],
                   "per_seed": [round(float(v.mean()), 4) for v in per_seed]}


# --------------------------------------------------------------------------- judge merging

def test_overall_of_three_ties_is_a_tie():
    """No dimension decides: a tie, not a win (mutant: next(..., 0) -> next(..., 1))."""
    from zj_utils.judges import overall

    assert overall({"safety": 0, "professionalism": 0, "fluency": 0}) == 0
    assert overall({"safety": 0, "professionalism": None, "fluency": 1}) is None


def test_a_tie_word_inside_a_longer_verdict_is_a_tie():
    """Tie words count as substrings ("两者持平" is a tie), except "=", which must be the whole value (mutants:
    `or` -> `and`, `w != "="` -> `w == "="`)."""
    from zj_utils.judges import parse_verdict

    got = parse_verdict('{"safety": "两者持平", "professionalism": "基本相同", "fluency": "="}')
    assert got == {"safety": 0, "professionalism": 0, "fluency": 0}
    assert parse_verdict('{"safety": "It is a tie", "professionalism": "A", "fluency": "B"}') == \
        {"safety": 0, "professionalism": 1, "fluency": -1}


def test_combine_orders_counts_the_parsed_orders_and_flags_a_flipped_overall():
    """info: how many of the two orders parsed, which dimensions flipped, and whether `overall` of one order
    alone differs from the other's (test_judge_merge.py checked these, but it predates `overall_flipped` and
    fails on the unmutated code, so nothing did; mutants: the count's + -> -, is not -> is, the flag's
    initial False -> True, its != -> ==)."""
    from zj_utils.judges import combine_orders

    ab = {"safety": 1, "professionalism": -1, "fluency": 0}
    agree = {d: -v for d, v in ab.items()}  # the same judgement from B's side
    assert combine_orders(ab, agree)[1] == {"orders_parsed": 2, "flipped": [], "overall_flipped": False}
    biased = {"safety": 1, "professionalism": 1, "fluency": 0}  # B-A also says its first answer is safer
    assert combine_orders(ab, biased)[1] == {"orders_parsed": 2, "flipped": ["safety"], "overall_flipped": True}
    one = {"orders_parsed": 1, "flipped": [], "overall_flipped": False}
    assert combine_orders(ab, None)[1] == one and combine_orders(None, agree)[1] == one
    assert combine_orders(None, None)[1] == {"orders_parsed": 0, "flipped": [], "overall_flipped": False}


# --------------------------------------------------------------------------- PPO maths (torch imported lazily: the
# stats and judge checks above need none)

def test_masked_mean_by_row_with_one_token_and_with_none():
    """A row with one masked-in token averages over 1, an empty row gives 0 (mutant: clamp(min=1) -> min=2 on the
    per-row branch; test_ppo.py's rows have 2 and 3 tokens)."""
    import torch
    from zj_utils.ppo_maths import masked_mean

    x = torch.tensor([[3.0, 8.0, 8.0], [5.0, 8.0, 8.0]])
    m = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert masked_mean(x, m, dim=1).tolist() == [3.0, 0.0]


def test_whitening_constant_advantages_gives_zeros_not_nan():
    """All masked-in values equal (variance 0): whitening gives 0 there, finite (mutant: var + 1e-8 -> var - 1e-8,
    rsqrt of a negative number is NaN)."""
    import torch
    from zj_utils.ppo_maths import masked_whiten

    x = torch.tensor([[0.7, 0.7, 0.7, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert masked_whiten(x, m).tolist() == [[0.0, 0.0, 0.0, 9.0]]
    assert masked_whiten(x, m, shift_mean=False)[0, :3].tolist() == pytest.approx([0.7, 0.7, 0.7])


def test_gae_defaults_are_ppoconfigs_and_one_token_responses_work():
    """compute_gae's defaults are PPOConfig's (gamma 1, lam 0.95; mutants 1.0 -> 2.0, 0.95 -> 1.95), and a
    response of one token (R = 1) is fine (mutant: zeros_like(rewards[:, 0]) -> rewards[:, 1])."""
    import torch
    from zj_utils.config import PPOConfig
    from zj_utils.ppo_maths import compute_gae

    cfg = PPOConfig()
    assert (cfg.gamma, cfg.lam) == (1.0, 0.95)
    r, v, m = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    adv, ret = compute_gae(r, v, m)
    # gamma = 1: deltas 0.1, 0.1, 0.3; A2 = 0.3, A1 = 0.1 + 0.95 * 0.3, A0 = 0.1 + 0.95 * A1
    a1 = 0.1 + 0.95 * 0.3
    assert adv[0].tolist() == pytest.approx([0.1 + 0.95 * a1, a1, 0.3])
    adv, ret = compute_gae(torch.tensor([[2.0], [1.0]]), torch.tensor([[0.5], [0.25]]), torch.ones(2, 1))
    assert adv.tolist() == [[1.5], [0.75]] and ret.tolist() == [[2.0], [1.0]]


def test_value_loss_clips_a_move_down_from_a_nonzero_old_value():
    """The clip is on new - old, both ways: test_ppo.py's old values are 0 and its moves are up, so new + old and
    clamp(.., +c, c) gave the same numbers (mutants: `new_values - old_values` -> `+`, `-cliprange_value` -> `+`)."""
    import torch
    from zj_utils.ppo_maths import value_loss

    old = torch.tensor([[0.5, 0.5, 0.5]])
    new = torch.tensor([[1.0, 0.0, 0.6]])
    ret = torch.tensor([[1.0, -1.0, 0.0]])
    loss, clipfrac = value_loss(new, old, ret, torch.ones(1, 3), 0.2)
    # up 0.5 -> clipped to 0.7: max(0, 0.09); down 0.5 -> clipped to 0.3: max(1, 1.69); 0.1 inside: 0.36 both
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1.69 + 0.36) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_explained_variance_by_hand():
    """The logged diagnostic had no test at all (mutants: return None, 1 - x -> 1 + x, 1.0 -> 2.0, ...):
    1 for a perfect value function, 0 for one that predicts 0, 0.75 here, NaN when the returns do not vary;
    padding counts for nothing."""
    import math

    import torch
    from zj_utils.ppo_maths import explained_variance

    ret = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(ret, ret, m) == pytest.approx(1.0)
    # returns 1, 2, 3 (variance 2/3); residuals -0.5, 0.5, 0 (variance 1/6): 1 - 1/4
    assert explained_variance(ret + torch.tensor([[0.5, -0.5, 0.0, 7.0]]), ret, m) == pytest.approx(0.75)
    # predicting 0 explains nothing, also when the returns' variance is small (2/300 here)
    assert explained_variance(torch.zeros(1, 4), 0.1 * ret, m) == pytest.approx(0.0, abs=1e-5)
    flat = torch.tensor([[2.0, 2.0, 2.0, 5.0]])
    assert math.isnan(explained_variance(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), flat, m))


def test_reward_norm_scales_scores_with_a_small_spread_and_shape_scores_defaults_are_identity():
    """Scores with std 0.5 are scaled (gain 2), not taken for constant: only std <= 1e-6 is (mutant: the 1e-6
    threshold -> 1.000001). shape_scores with its defaults returns the raw scores (mutants: gain 1.0 -> 2.0, bias
    0.0 -> 1.0; the PPO step always passes them)."""
    import torch
    from zj_utils.ppo_maths import fit_reward_norm, shape_scores

    gain, bias = fit_reward_norm(torch.tensor([1.0, 2.0]))  # mean 1.5, population std 0.5
    assert (gain, bias) == pytest.approx((2.0, -3.0))
    raw = torch.tensor([0.25, -1.5, 3.0])
    assert shape_scores(raw, torch.tensor([True, False, True])).tolist() == raw.tolist()


def test_values_are_read_from_the_last_hidden_state():
    """V comes from the policy's last hidden state at the position before each response token (mutant:
    hidden_states[-1] -> hidden_states[0], the embeddings; the value heads in the other tests start at zero, so V
    was 0 whichever layer it read)."""
    import torch
    from test_ppo import make_policy, make_tokenizer
    from zj_utils.ppo_maths import ValueHead, compute_logprobs

    tok = make_tokenizer()
    policy = make_policy(tok, seed=0)
    vh = ValueHead(policy.config.hidden_size)
    torch.manual_seed(1)
    torch.nn.init.normal_(vh.summary.weight)
    ids = torch.tensor([tok("abcdefg", add_special_tokens=False)["input_ids"]])
    am = torch.ones_like(ids)
    with torch.no_grad():
        _, _, values = compute_logprobs(policy, ids, am, 3, value_head=vh)
        hidden = policy(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states
        want, embeddings = vh(hidden[-1][:, 2:-1]), vh(hidden[0][:, 2:-1])
    assert torch.allclose(values, want, atol=1e-5) and not torch.allclose(want, embeddings, atol=1e-3)


# --------------------------------------------------------------------------- probe scoring

def test_probe_accuracy_rounds_to_four_decimals(monkeypatch):
    """1 hit in 3 is 0.3333 (mutant: round(.., 4) -> 5; the other tests' accuracies are 0, 0.5 and 1)."""
    import zj_utils.inference as inf

    monkeypatch.setattr(inf, "probe_hits", lambda model, tokenizer, probes: [1, 0, 0])
    probes = [{"split": "train", "attribute": "drug"}] * 3
    assert inf.probe_accuracy(None, None, probes) == {"all": 0.3333, "attribute/drug": 0.3333,
                                                      "split/train": 0.3333, "n": 3}


class _SentencePieceLikeTokenizer:
    """What choice_logprobs must cope with in a hub tokenizer, in miniature: greedy longest match over a small
    vocabulary with the merge ":a" (a BPE merging the prompt's last character with the choice's first), a dummy
    word-start prefix on the first character of a text (SentencePiece's "▁"), and BOS when special tokens are
    asked for (LLaMA's tokenizer)."""

    vocab = {"<s>": 0, "<pad>": 1, "q": 2, ":": 3, "a": 4, "b": 5, ":a": 6, "▁q": 7, "▁a": 8, "▁b": 9}
    pad_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        ids, i = ([0] if add_special_tokens else []), 0
        while i < len(text):
            piece = text[i:i + 2] if text[i:i + 2] in self.vocab else text[i]
            if i == 0 and "▁" + piece in self.vocab:
                piece_id = self.vocab["▁" + piece]
            else:
                piece_id = self.vocab[piece]
            ids.append(piece_id)
            i += len(piece)
        return {"input_ids": ids}


def test_choice_logprobs_with_a_tokeniser_that_merges_prefixes_and_adds_bos():
    """"q:" is [▁q, :]. "q:b" is [▁q, :, b]: the prompt is a prefix, so "b" is scored as the token it is in
    context, b (not ▁b, as it tokenises alone). "q:a" is [▁q, :a]: no prefix, so "a" is scored as its own tokens
    [▁a] after the prompt. The model puts logit 2 on "a" and 1 on "b" after ":" at position 1, 0 elsewhere.
    Mutants killed: the prefix test `==` -> `!=` (scores nothing for "a"); add_special_tokens True for the prompt
    (":" moves to position 2), for prompt+choice ("b" falls back to ▁b) or for the fallback (BOS is scored)."""
    import math
    from types import SimpleNamespace

    import torch

    from zj_utils.inference import choice_logprobs

    class AfterColonAtOne(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, attention_mask=None, **kw):
            logits = torch.zeros(*input_ids.shape, 10) + 0 * self.w
            colon = (input_ids[:, 1] == 3).float()
            logits[:, 1, 4] += 2.0 * colon
            logits[:, 1, 5] += 1.0 * colon
            return SimpleNamespace(logits=logits)

    got = choice_logprobs(AfterColonAtOne(), _SentencePieceLikeTokenizer(), "q:", ["a", "b"])
    z = math.log(math.exp(2) + math.exp(1) + 8)
    assert got == pytest.approx([0 - z, 1 - z], abs=1e-6)


# --------------------------------------------------------------------------- the rule annotator

def test_fluency_deductions_by_flaw():
    """The fluency abilities' exact deductions (test_judge.py only checks that a flawed answer scores below a good
    one, so e.g. `logic -= 0.3` -> `+=` survived: readability still fell). Checked by hand: truncated -0.3 logic
    and -0.4 readability; leaked token -0.6 readability; absurd length -0.5 readability; self-contradiction -0.5
    logic; repetition: coherence - min(1, 0.4 + share of repeated 4-grams), checked from 8 4-grams on."""
    from zj_utils.annotator import _fluency

    def abilities(a, forbidden=None):
        return pytest.approx(_fluency(a, forbidden)[0])

    ok = {"logic": 1.0, "coherence": 1.0, "readability": 1.0}
    assert _fluency("考虑是感冒，建议多喝水休息。", None)[0] == ok
    assert abilities("考虑是感冒，建议休息") == ok | {"logic": 0.7, "readability": 0.6}
    assert abilities("考虑是感冒。<human>:") == ok | {"logic": 0.7, "readability": 0.0}
    assert abilities("考虑是感冒。<pad>多喝水。") == ok | {"readability": 0.4}
    assert abilities("好。") == ok | {"readability": 0.5}
    assert abilities("".join(chr(0x4E00 + i) for i in range(310)) + "。") == ok | {"readability": 0.5}
    # the length limits are inclusive: 4 and 300 characters are fine (mutants: < -> <=, > -> >=)
    assert abilities("喝热水。") == ok
    assert abilities("".join(chr(0x4E00 + i) for i in range(299)) + "。") == ok
    assert abilities("布洛芬禁用。首选布洛芬，多喝水。", "布洛芬") == ok | {"logic": 0.5}
    assert abilities("首选布洛芬，多喝水。", "布洛芬") == ok
    # 18 4-grams, 13 distinct (share 5/18), "甲乙丙丁" 3 times: 1 - (0.4 + 5/18)
    assert abilities("甲乙丙丁" * 3 + "戊己庚辛壬癸子丑。") == ok | {"coherence": 1 - (0.4 + 5 / 18)}
    # exactly 8 4-grams, 5 distinct (share 3/8 > 0.25): 1 - (0.4 + 3/8)
    assert abilities("甲乙丙丁甲乙丙丁甲乙。") == ok | {"coherence": 1 - (0.4 + 3 / 8)}
    # one 4-gram 3 times among otherwise distinct text: a small share (2/30) but flagged by the count of 3
    fill = [chr(0x4E00 + i) for i in range(20)]
    text = "甲乙丙丁" + "".join(fill[:10]) + "甲乙丙丁" + "".join(fill[10:]) + "甲乙丙丁。"
    assert abilities(text) == ok | {"coherence": 1 - (0.4 + 2 / 30)}


# --------------------------------------------------------------------------- validation

def _cmt(**kw):
    rec = {"id": 1, "cate1": "内科", "cate2": "呼吸", "instruction": "现在还咳嗽", "input": "", "output": "多喝水",
           "history": [["咳嗽", "多久了？"]]}
    return {k: v for k, v in (rec | kw).items() if v is not None}


def test_cmtmedqa_without_cate1_loads(tmp_path):
    """cate1 is optional, as cate2 is (mutant: required=False -> True on cate1)."""
    import json

    from zj_utils.data import load_cmtmedqa, validate

    path = tmp_path / "cmt.json"
    path.write_text(json.dumps([_cmt(cate1=None)], ensure_ascii=False), encoding="utf-8")
    assert validate(path, "cmtmedqa") == []
    assert load_cmtmedqa(path)[0]["meta"]["cate1"] == ""


def test_check_does_not_count_a_record_it_reported(tmp_path):
    """`zj validate`'s record count leaves out a record with a malformed history pair or message (mutants:
    `ok = False` -> `ok = True`, which reported the problem but kept the record with the bad part dropped)."""
    import json

    from zj_utils.data import check

    cmt = tmp_path / "cmt.json"
    cmt.write_text(json.dumps([_cmt(history=[["咳嗽", "多久了？"], ["发热"]]), _cmt(id=2),
                               _cmt(id=3, history=[["咳嗽", 7]])], ensure_ascii=False), encoding="utf-8")
    got = check(cmt, "cmtmedqa")
    assert (got["records"], len(got["problems"])) == (1, 2), got
    chat = tmp_path / "chat.jsonl"
    rows = [{"id": "a", "messages": [{"role": "user", "content": "头痛"}, {"role": "doctor", "content": "多久"}]},
            {"id": "b", "messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": 5}]},
            {"id": "c", "messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "多久"}]}]
    chat.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = check(chat, "messages_jsonl")
    assert (got["records"], len(got["problems"])) == (1, 2), got


def test_cmtmedqa_without_input_or_cate2_loads(tmp_path):
    """`input` and `cate2` are optional (mutants: required=False -> True on either)."""
    import json

    from zj_utils.data import load_cmtmedqa, validate

    path = tmp_path / "cmt.json"
    path.write_text(json.dumps([_cmt(input=None), _cmt(id=2, cate2=None)], ensure_ascii=False), encoding="utf-8")
    assert validate(path, "cmtmedqa") == []
    assert [d["meta"]["cate2"] for d in load_cmtmedqa(path)] == ["呼吸", ""]


def test_a_safety_record_missing_either_text_is_not_counted(tmp_path):
    """{instruct, output} with one of them empty is reported and left out (mutant: `or` -> `and`, which kept a
    record with one text missing)."""
    import json

    from zj_utils.data import check

    path = tmp_path / "safety.json"
    path.write_text(json.dumps([{"instruct": "怎么偷药", "output": ""}, {"instruct": "", "output": "不能提供"},
                                {"instruct": "怎么偷药", "output": "不能提供"}], ensure_ascii=False), encoding="utf-8")
    got = check(path, "cmtmedqa")
    assert (got["records"], len(got["problems"])) == (1, 2), got


def test_a_message_that_is_not_an_object_leaves_its_record_out(tmp_path):
    """messages: [.., "text"] is reported and the record not counted (mutant: `ok = False` -> True there)."""
    import json

    from zj_utils.data import check

    chat = tmp_path / "chat.jsonl"
    rows = [{"id": "a", "messages": [{"role": "user", "content": "头痛"}, "多久了？"]},
            {"id": "b", "messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "多久"}]}]
    chat.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = check(chat, "messages_jsonl")
    assert (got["records"], len(got["problems"])) == (1, 1), got
    assert "expected an object" in str(got["problems"][0])


def test_disrespectful_wording_loses_the_ethics_ability():
    """An answer with a rubric.ETHICS_VIOLATIONS phrase scores ethics 0 and says why (mutants: the 0.0 -> 1.0,
    `ethics < 1` -> `<=` only changing the reason)."""
    from zj_utils.annotator import assess
    from zj_utils.world import WorldConfig, build_world

    kg = build_world(WorldConfig(), 0).kg
    rude, polite = assess("你真笨，多喝水。", {}, kg), assess("请多喝水。", {}, kg)
    assert (rude.abilities["ethics"], polite.abilities["ethics"]) == (0.0, 1.0)
    assert "disrespectful or privacy-violating wording" in rude.reasons
    assert "disrespectful or privacy-violating wording" not in polite.reasons
    assert rude.safety < polite.safety
