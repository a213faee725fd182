"""The pieces notebooks 04 and 05 use to show RLHF step by step: a ranking's pairs and the tie it drops, the
reward model's loss by hand against TRL's, the token it reads its score at, gold vs flawed answers, accuracy by
epoch; PPO's per-token table, one optimizer step on a given rollout and what the next epoch's ratio sees; the KL
sweep; and `run_or_reuse`, which lets a notebook stepped through by hand read a completed stage back."""
import json
import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import zj_utils.ppo as P
import zj_utils.ppo_maths as M
from ppo_fixtures import PROMPTS, RESPONSES, fixed_rollout, length_reward
from test_ppo import _threads, make_counting_rm, make_policy, tiny_config, tok  # noqa: F401 (fixtures)
from test_reward_inputs import CONVS, CHOSEN, REJECTED, chatml_tokenizer, spy_reward_model, tiny_tokenizer
from zj_utils.rankings import answer_letters, pair_outcomes, ranking_string, ranks_to_pairs
from zj_utils.presets import get_preset


# --------------------------------------------------------------------------- a ranking's pairs

def test_the_papers_ranking_gives_five_pairs_and_drops_its_tie():
    responses, ranks = ["A", "B", "C", "D"], [2, 2, 4, 1]  # D > A = B > C
    assert ranking_string(ranks) == "D > A = B > C" and answer_letters(4) == ["A", "B", "C", "D"]
    rows = pair_outcomes(responses, ranks)
    assert len(rows) == 6
    assert [(r["chosen"], r["rejected"]) for r in rows if r["outcome"] == "pair"] == [(3, 0), (3, 1), (3, 2),
                                                                                     (0, 2), (1, 2)]
    assert [(r["a"], r["b"]) for r in rows if r["outcome"] == "tie"] == [(0, 1)]
    assert ranking_string([1, 1, 1]) == "A = B = C"
    with pytest.raises(ValueError):
        pair_outcomes(["a"], [1, 2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("xyz"), st.integers(1, 4)), min_size=1, max_size=5))
def test_pair_outcomes_keep_exactly_ranks_to_pairs(answers):
    """Whatever the ties and repeated texts, the kept rows are ranks_to_pairs' pairs in its order, and every
    unordered pair is accounted for once, with the reasons pair_report counts."""
    from zj_utils.reward import pair_report

    responses, ranks = [a for a, _ in answers], [r for _, r in answers]
    rows = pair_outcomes(responses, ranks)
    kept = [(responses[r["chosen"]], responses[r["rejected"]]) for r in rows if r["outcome"] == "pair"]
    assert kept == ranks_to_pairs(responses, ranks)
    n = len(responses)
    assert sorted((r["a"], r["b"]) for r in rows) == [(i, j) for i in range(n) for j in range(i + 1, n)]
    report = pair_report([{"responses": responses, "ranks": ranks}], len(kept))
    count = lambda k: sum(r["outcome"] == k for r in rows)  # noqa: E731
    assert report["dropped"] == {"tied": count("tie"), "identical_text": count("identical_text"),
                                 "duplicate": count("duplicate")}


def test_tie_example_prefers_a_ranking_with_both_a_tie_and_a_pair():
    from zj_utils.reward import tie_example

    all_tied = {"id": "a", "ranks": [1, 1, 1, 1]}
    strict = {"id": "b", "ranks": [1, 2, 3, 4]}
    both = {"id": "c", "ranks": [2, 1, 2, 2]}
    assert tie_example([all_tied, strict, both])["id"] == "c"
    assert tie_example([all_tied, strict])["id"] == "b"
    assert tie_example([all_tied]) is None


# --------------------------------------------------------------------------- the reward model

@pytest.mark.parametrize("make_tok,last_token", [(tiny_tokenizer, "</s>"), (chatml_tokenizer, "\n")],
                         ids=["tiny", "chatml"])
def test_scored_token_is_where_the_classifier_pools(make_tok, last_token):
    from zj_utils.reward import marked_tokens, reward_ids, score_conversations, scored_token

    tok = make_tok()
    rm = spy_reward_model(tok)
    pos = scored_token(tok, CONVS[1], CHOSEN[1], rm)
    assert pos["ids"] == reward_ids(tok, CONVS[1], CHOSEN[1])
    assert pos["index"] == len(pos["ids"]) - 1 and pos["tokens"][pos["index"]] == last_token
    want = score_conversations(rm, tok, [CONVS[1] + [{"role": "assistant", "content": CHOSEN[1]}]])[0].item()
    assert pos["score"] == pytest.approx(want, abs=1e-5)
    assert pos["score_at_index"] == pytest.approx(want, abs=1e-5)
    assert scored_token(tok, CONVS[1], CHOSEN[1])["index"] == pos["index"]  # no model: the position alone
    assert marked_tokens(["a", "b", "c"], 2) == "a|b|⟦c⟧"
    assert marked_tokens(["a", "b", "c"], 2, width=2) == "… b|⟦c⟧"


@pytest.mark.parametrize("make_tok", [tiny_tokenizer, chatml_tokenizer], ids=["tiny", "chatml"])
def test_loss_by_hand_is_the_reward_trainers_loss(tmp_path, make_tok):
    """-log sigmoid(r_chosen - r_rejected), each answer scored alone, equals RewardTrainer.compute_loss on the
    batch its collator builds (chosen and rejected rows padded together)."""
    from zj_utils.reward import pairwise_loss_by_hand, trainer_pairwise_loss

    tok = make_tok()
    rm = spy_reward_model(tok)
    pairs = [{"prompt": c, "chosen": [{"role": "assistant", "content": a}],
              "rejected": [{"role": "assistant", "content": r}]} for c, a, r in zip(CONVS, CHOSEN, REJECTED)]
    hand = pairwise_loss_by_hand(rm, tok, pairs)
    margins = torch.tensor(hand["r_chosen"]) - torch.tensor(hand["r_rejected"])
    assert hand["per_pair"] == pytest.approx([math.log1p(math.exp(-m)) for m in margins.tolist()], abs=1e-6)
    assert hand["loss"] == pytest.approx(sum(hand["per_pair"]) / 2, abs=1e-7)
    trl = trainer_pairwise_loss(rm, tok, pairs, get_preset("smoke"), tmp_path)
    assert trl["loss"] == pytest.approx(hand["loss"], abs=1e-5)
    assert trl["r_chosen"] == pytest.approx(hand["r_chosen"], abs=1e-5)
    assert trl["r_rejected"] == pytest.approx(hand["r_rejected"], abs=1e-5)


def test_gold_vs_flawed_scores_each_twin_on_its_own_prompt(tmp_path):
    from zj_utils.data import write_jsonl
    from zj_utils.reward import gold_vs_flawed, score_conversations

    tok = chatml_tokenizer()
    rm = spy_reward_model(tok)
    write_jsonl(tmp_path / "test_single.jsonl", [{"id": "t1", "messages": CONVS[0]},
                                                 {"id": "t2", "messages": CONVS[1]}])
    write_jsonl(tmp_path / "test_safety.jsonl", [{"id": "s1", "messages": CONVS[1]}])
    write_jsonl(tmp_path / "test_multiturn.jsonl", [{"id": "m1", "messages": CONVS[0]}])  # no entry in gold.jsonl
    write_jsonl(tmp_path / "gold.jsonl", [
        {"id": "t1", "file": "test_single.jsonl", "gold": "rest", "flawed": "take drug x", "flaw": "contra_drug"},
        {"id": "t2", "file": "test_single.jsonl", "gold": "ask more", "flawed": None, "flaw": None},  # no twin
        {"id": "s1", "file": "test_safety.jsonl", "gold": "go to hospital", "flawed": "wait", "flaw": "no_emergency"},
        {"id": "r1", "file": "rank_prompts.jsonl", "gold": "a", "flawed": "b", "flaw": "no_ask"}])  # not a test set
    rows = gold_vs_flawed(rm, tok, tmp_path)
    assert [(r["id"], r["set"], r["flaw"]) for r in rows] == [("t1", "test_single", "contra_drug"),
                                                              ("s1", "test_safety", "no_emergency")]

    def alone(conv, answer):
        return score_conversations(rm, tok, [conv + [{"role": "assistant", "content": answer}]])[0].item()

    assert rows[0]["gold"] == pytest.approx(alone(CONVS[0], "rest"), abs=1e-5)
    assert rows[1]["flawed"] == pytest.approx(alone(CONVS[1], "wait"), abs=1e-5)


def test_flaw_table_by_hand():
    from zj_utils.reward import flaw_table

    rows = [{"flaw": "a", "gold": 1.0, "flawed": 0.0}, {"flaw": "a", "gold": 0.0, "flawed": 0.5},
            {"flaw": "b", "gold": 2.0, "flawed": 1.0}]
    t = flaw_table(rows)
    assert list(t) == ["a", "b", "all"]
    assert t["a"] == {"n": 2, "gold_mean": 0.5, "flawed_mean": 0.25, "margin_mean": 0.25, "gold_higher": 0.5}
    assert t["all"]["n"] == 3 and t["all"]["gold_higher"] == pytest.approx(0.6667, abs=1e-4)
    assert flaw_table([]) == {}


def test_accuracy_by_epoch_from_the_trainers_log(tmp_path):
    from zj_utils.reward import accuracy_by_epoch

    lines = [{"step": 1, "loss": 0.7, "accuracy": 0.5, "epoch": 0.25},
             {"step": 2, "loss": 0.6, "accuracy": 0.7, "epoch": 0.5},
             {"step": 2, "eval_loss": 0.65, "eval_accuracy": 0.6, "epoch": 0.5},
             {"step": 4, "loss": 0.5, "accuracy": 0.9, "epoch": 1.0},
             {"step": 4, "eval_loss": 0.62, "eval_accuracy": 0.7, "epoch": 1.0},
             {"step": 6, "loss": 0.3, "accuracy": 1.0, "epoch": 1.5},
             {"step": 6, "train_runtime": 1.0, "train_loss": 0.5, "epoch": 1.5}]  # the trainer's summary line
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = accuracy_by_epoch(tmp_path / "log.jsonl")
    assert rows == [{"epoch": 1, "train_accuracy": 0.7, "train_loss": 0.6, "dev_accuracy": 0.7, "dev_loss": 0.62,
                     "last_step": 4},
                    {"epoch": 2, "train_accuracy": 1.0, "train_loss": 0.3, "dev_accuracy": None, "dev_loss": None,
                     "last_step": 6}]



def test_reward_model_plots(tmp_path):
    from zj_utils import plots

    rows = [{"epoch": 1, "train_accuracy": 0.6, "dev_accuracy": 0.55}, {"epoch": 2, "train_accuracy": 0.8,
                                                                          "dev_accuracy": None}]
    ax = plots.accuracy_by_epoch(rows).axes[0]
    train, dev = ax.lines[0], ax.lines[1]
    assert list(train.get_ydata()) == [0.6, 0.8] and list(dev.get_xdata()) == [1] and list(dev.get_ydata()) == [0.55]
    table = {"no_ask": {"n": 2, "gold_mean": 0.5, "flawed_mean": 0.1, "gold_higher": 1.0},
             "all": {"n": 2, "gold_mean": 0.5, "flawed_mean": 0.1, "gold_higher": 1.0}}
    fig = plots.gold_vs_flawed(table)
    assert [b.get_height() for b in fig.axes[0].patches] == [0.5, 0.5, 0.1, 0.1]  # gold bars, then flawed bars
    plots.save(fig, tmp_path, "gold_vs_flawed")
    assert (tmp_path / "gold_vs_flawed.png").stat().st_size > 1000


# --------------------------------------------------------------------------- PPO

def _rollout_and_old(tok, policy, vh, cfg):
    ro = fixed_rollout(tok)
    with torch.no_grad():
        old_logp, _, old_values = M.compute_logprobs(policy, ro.input_ids, ro.attention_mask,
                                                     ro.query_ids.shape[1], cfg.temperature, vh)
    return ro, old_logp, old_values


def test_token_table_rows_are_the_masked_positions(tok):
    ro = fixed_rollout(tok)
    x = torch.arange(ro.response_ids.numel(), dtype=torch.float32).reshape(ro.response_ids.shape)
    for row in range(len(RESPONSES)):
        table = P.token_table(tok, ro, row, {"x": x})
        n = int(ro.response_mask[row].sum())
        assert [r["t"] for r in table] == list(range(n))
        assert [r["x"] for r in table] == x[row, :n].tolist()
        assert "".join(r["token"] for r in table).startswith(RESPONSES[row])


def test_ppo_step_on_a_given_rollout_then_the_ratio_the_next_epoch_sees(tok, monkeypatch):
    """ppo_step(rollout=...) samples nothing and updates on that rollout: its one epoch sees ratio 1 (no clipping);
    after the step ratio_stats sees ratios off 1, and its clip fraction and loss are policy_loss's."""
    def no_sampling(*a, **k):
        raise AssertionError("ppo_step sampled although a rollout was given")

    monkeypatch.setattr(P, "generate_rollouts", no_sampling)
    cfg = P.PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, kl_coef=0.05, missing_eos_penalty=-1.0)
    policy, vh = make_policy(tok), M.ValueHead(32)
    ro, old_logp, old_values = _rollout_and_old(tok, policy, vh, cfg)
    mask = ro.response_mask.float()
    scores = M.shape_scores(torch.tensor(length_reward(None, RESPONSES)), ro.has_eos, 1.0, 0.0, -1.0)
    with torch.no_grad(), policy.disable_adapter():
        ref_logp, _, _ = M.compute_logprobs(policy, ro.input_ids, ro.attention_mask, ro.query_ids.shape[1])
    rewards, _ = M.compute_rewards(scores, old_logp, ref_logp, mask, cfg.kl_coef)
    adv = M.masked_whiten(M.compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)[0], mask)

    before = P.ratio_stats(policy, ro, old_logp, adv, cfg)
    assert before["max_ratio_change"] < 1e-5 and before["clipfrac"] == 0 and before["clipped"].sum() == 0
    params = [p for p in policy.parameters() if p.requires_grad] + list(vh.parameters())
    stats = P.ppo_step(policy, vh, torch.optim.AdamW(params, lr=3e-2), tok, None, ro.messages, cfg,
                       M.KLController(cfg.kl_coef), torch.Generator().manual_seed(0), reward_fn=length_reward,
                       rollout=ro)
    assert stats["policy_clipfrac"] == 0 and stats["score"] == pytest.approx(sum(length_reward(None, RESPONSES)) / 4)
    after = P.ratio_stats(policy, ro, old_logp, adv, cfg)
    assert after["max_ratio_change"] > 0.05
    loss, clipfrac, approx_kl = M.policy_loss(after["new_logp"], old_logp, adv, mask, cfg.cliprange)
    assert after["clipfrac"] == pytest.approx(float(clipfrac)) and after["policy_loss"] == pytest.approx(float(loss))
    assert after["clipfrac"] == pytest.approx(float(M.masked_mean(after["clipped"], mask)))
    torch.testing.assert_close(after["ratio"], torch.where(mask.bool(), (after["new_logp"] - old_logp).exp(),
                                                           torch.ones(())))
    # a token is clipped only outside [1 - eps, 1 + eps], on the side its advantage pushes toward
    out = after["clipped"].bool()
    r, a = after["ratio"][out], adv[out]
    assert bool((((r > 1 + cfg.cliprange) & (a > 0)) | ((r < 1 - cfg.cliprange) & (a < 0))).all())


def test_train_ppo_uses_a_given_reward_normalisation(tok, tmp_path, monkeypatch):
    def no_fit(*a, **k):
        raise AssertionError("fitted a normalisation although one was given")

    monkeypatch.setattr(P, "sample_reward_norm", no_fit)
    cfg = P.PPOConfig(steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, save_every=0,
                      judge_every=0)
    summary = P.train_ppo(make_policy(tok), tok, make_counting_rm(tok), PROMPTS, cfg, tmp_path, seed=0,
                          reward_norm=(2.0, -0.5))
    assert (summary["reward_norm_gain"], summary["reward_norm_bias"]) == (2.0, -0.5)


# --------------------------------------------------------------------------- the KL sweep

@pytest.fixture
def sweep_out(tmp_path, tok):
    """An OUT folder with what the sweep reads: a tiny SFT model and reward model (merged, with the tokenizer) and
    the world's ranking prompts, and the three stages' metrics.json."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from zj_utils.data import write_jsonl

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(tok, initializer_range=0.2)).save_pretrained(tmp_path / "sft" / "merged")
    tok.save_pretrained(tmp_path / "sft" / "merged")
    LlamaForSequenceClassification(tiny_config(tok, num_labels=1)).save_pretrained(tmp_path / "rm" / "merged")
    write_jsonl(tmp_path / "world" / "rank_prompts.jsonl", [{"id": f"r{i}", "messages": m}
                                                             for i, m in enumerate(PROMPTS)])
    for s in ("world", "sft", "rm"):
        (tmp_path / s / "metrics.json").write_text("{}")
        os.utime(tmp_path / s / "metrics.json", ns=(10**18, 10**18))  # long before anything the sweep writes
    preset = get_preset("smoke", ["quant.load_in_4bit=false", "ppo.batch_size=2", "ppo.mini_batch_size=2",
                                  "ppo.max_new_tokens=4", "ppo.norm_samples=4", "ppo.steps=2"])
    return tmp_path, preset


def test_kl_sweep_runs_once_per_beta_shares_one_fit_and_reads_back(sweep_out, monkeypatch):
    import zj_utils.kl_sweep as K

    out, preset = sweep_out
    fits, real_fit = [], P.sample_reward_norm
    monkeypatch.setattr(P, "sample_reward_norm", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    rows = K.run_kl_sweep(preset, out, 0, [0.0, 0.5], steps=2)
    assert [r["kl_coef"] for r in rows] == [0.0, 0.5] and all(r["steps"] == 2 for r in rows)
    assert len(fits) == 1  # one normalisation for both runs
    saved = [json.loads((out / K.SWEEP_DIR / f"kl-{b:g}" / "summary.json").read_text()) for b in (0.0, 0.5)]
    assert saved[0]["reward_norm_gain"] == saved[1]["reward_norm_gain"]
    assert [s["config"]["kl_coef"] for s in saved] == [0.0, 0.5] and not saved[0]["config"]["adaptive_kl"]
    assert rows[1] == K.sweep_row(saved[1])
    assert rows[1]["score_normalized"] == pytest.approx(saved[1]["reward_norm_gain"] * saved[1]["score_last5"]
                                                        + saved[1]["reward_norm_bias"])

    trained = []
    real_train = P.train_ppo
    monkeypatch.setattr(P, "train_ppo", lambda *a, **k: trained.append(a[4].kl_coef) or real_train(*a, **k))
    assert K.run_kl_sweep(preset, out, 0, [0.0, 0.5], steps=2) == rows and trained == []  # read back
    K.run_kl_sweep(preset, out, 0, [0.5], steps=2, reuse=False)
    assert trained == [0.5]
    K.run_kl_sweep(preset, out, 0, [0.0], steps=1)  # other settings: trained again
    assert trained == [0.5, 0.0]
    (out / "rm" / "metrics.json").write_text("{}")  # the reward model was retrained after the runs
    K.run_kl_sweep(preset, out, 0, [0.5], steps=2)
    assert trained == [0.5, 0.0, 0.5]


def test_sweep_config_fixes_beta_and_drops_checkpoints_and_probe():
    from zj_utils.kl_sweep import sweep_config

    preset = get_preset("smoke-rl")
    cfg = sweep_config(preset, 1, None)
    assert (cfg.kl_coef, cfg.adaptive_kl, cfg.steps, cfg.save_every, cfg.judge_every) == (1.0, False, 60, 0, 0)
    assert cfg.learning_rate == preset.ppo.learning_rate and sweep_config(preset, 0.0, 5).steps == 5



def test_kl_sweep_plot_puts_each_run_at_its_kl_and_score():
    from zj_utils import plots

    rows = [{"kl_coef": 1.0, "kl": 0.5, "score_normalized": 0.1}, {"kl_coef": 0.0, "kl": 4.0, "score_normalized": 0.9}]
    ax = plots.kl_sweep(rows).axes[0]
    assert ax.collections[0].get_offsets().tolist() == [[4.0, 0.9], [0.5, 0.1]]  # in beta order
    assert [t.get_text() for t in ax.texts] == ["β=0", "β=1"]


# --------------------------------------------------------------------------- reusing a completed stage

def _stage(out, stage, preset, seed=0, t=None, **config):
    """A completed stage as the stage writes it: config.json via begin_stage, then metrics.json."""
    from zj_utils.common import begin_stage, write_json

    d, _ = begin_stage(stage, preset, out, seed, **config)
    write_json(d / "metrics.json", {"stage": stage})
    if t is not None:
        os.utime(d / "config.json", ns=(t, t))
        os.utime(d / "metrics.json", ns=(t + 1, t + 1))
    return d


def test_why_not_reuse_and_run_or_reuse(tmp_path, monkeypatch):
    import zj_utils.stages as stages

    preset = get_preset("smoke")
    rm_cfg = dict(rm=preset.rm, extra_rankings=[], model=preset.model, quant=preset.quant)  # as run_rm records it
    assert "no completed run" in stages.why_not_reuse("rm", preset, tmp_path, 0)
    _stage(tmp_path, "sft", preset, t=10**18, sft=preset.sft, model=preset.model, quant=preset.quant)
    d = _stage(tmp_path, "rm", preset, t=2 * 10**18, **rm_cfg)
    assert stages.why_not_reuse("rm", preset, tmp_path, 0) is None
    assert "seed 0, not 'smoke' seed 1" in stages.why_not_reuse("rm", preset, tmp_path, 1)
    assert "'rm' settings differ" in stages.why_not_reuse("rm", get_preset("smoke", ["rm.epochs=2"]), tmp_path, 0)
    assert "'extra_rankings'" in stages.why_not_reuse("rm", preset, tmp_path, 0, extra_rankings=["h.jsonl"])
    assert "not 'smoke-rl' seed 0" in stages.why_not_reuse("rm", get_preset("smoke-rl"), tmp_path, 0)
    os.utime(tmp_path / "sft" / "metrics.json", ns=(3 * 10**18, 3 * 10**18))  # SFT re-ran after the reward model
    assert "sft ran after it" in stages.why_not_reuse("rm", preset, tmp_path, 0)
    os.utime(tmp_path / "sft" / "metrics.json", ns=(10**18, 10**18))
    os.utime(d / "config.json", ns=(4 * 10**18, 4 * 10**18))  # a later start that did not finish
    assert "did not finish" in stages.why_not_reuse("rm", preset, tmp_path, 0)
    os.utime(d / "config.json", ns=(2 * 10**18, 2 * 10**18))
    human = tmp_path / "human.jsonl"
    human.write_text("")
    os.utime(human, ns=(10**18, 10**18))
    rm_with_human = dict(rm_cfg, extra_rankings=[str(human)])
    d = _stage(tmp_path, "rm", preset, t=2 * 10**18, **rm_with_human)
    assert stages.why_not_reuse("rm", preset, tmp_path, 0, extra_rankings=[str(human)]) is None
    os.utime(human, ns=(3 * 10**18, 3 * 10**18))  # a person ranked more after the reward model was trained
    assert "changed after it" in stages.why_not_reuse("rm", preset, tmp_path, 0, extra_rankings=[str(human)])
    d = _stage(tmp_path, "rm", preset, t=2 * 10**18, **rm_cfg)

    ran = []
    monkeypatch.setattr(stages, "run_stage", lambda stage, *a, **k: ran.append((stage, k)) or {"ran": True})
    assert stages.run_or_reuse("rm", preset, tmp_path, 0) == {"stage": "rm"} and ran == []
    assert stages.run_or_reuse("rm", preset, tmp_path, 0, reuse=False) == {"ran": True}
    assert stages.run_or_reuse("rm", preset, tmp_path, 0, extra_rankings=["h.jsonl"]) == {"ran": True}
    assert ran == [("rm", {}), ("rm", {"extra_rankings": ["h.jsonl"]})]

