"""PPO's iteration (`ppo_step`) pinned on a fixed rollout: what reaches the loss is checked against values computed
by hand. The pure pieces have their own tests in test_ppo.py; these catch a wrong argument passed between them
(whitening over padding, the missing-EOS penalty's sign or place, the temperature of the log-probs) and the
non-finite skip path of the update."""
import math

import pytest
import torch

import zj_utils.ppo as P
from ppo_fixtures import HAS_EOS, PROMPTS, RESPONSES, fixed_rollout, length_reward, use_rollout
from test_ppo import _threads, make_policy, make_tokenizer, tok  # noqa: F401 (fixtures: one thread count, one tokenizer)
from zj_utils.ppo import PPOConfig
from zj_utils.ppo_maths import KLController, ValueHead


def _cfg(**kw):
    base = dict(batch_size=4, mini_batch_size=4, ppo_epochs=1, learning_rate=1e-3, kl_coef=0.0,
                missing_eos_penalty=0.0, whiten_advantages=True)
    return PPOConfig(**(base | kw))


def _trainable(policy, vh):
    return [p for p in policy.parameters() if p.requires_grad] + list(vh.parameters())


def _step(tok, monkeypatch, rollout, cfg, reward_fn=length_reward, norm=(1.0, 0.0), policy=None, vh=None,
          optimizer=None, gen_seed=0):
    """Run one ppo_step on `rollout`, recording what policy_loss and compute_rewards are given and return."""
    policy = policy or make_policy(tok)
    vh = vh or ValueHead(32)
    opt = optimizer or torch.optim.AdamW(_trainable(policy, vh), lr=cfg.learning_rate, weight_decay=0.0)
    seen = {"loss_inputs": [], "rewards": []}
    real_pl, real_cr = P.policy_loss, P.compute_rewards

    def spy_pl(new_logp, old_logp, advantages, mask, cliprange):
        seen["loss_inputs"].append({"new_logp": new_logp.detach().clone(), "old_logp": old_logp.clone(),
                                    "adv": advantages.clone(), "mask": mask.clone()})
        return real_pl(new_logp, old_logp, advantages, mask, cliprange)

    def spy_cr(scores, logp, ref_logp, mask, kl_coef, estimator="k1"):
        rewards, kl = real_cr(scores, logp, ref_logp, mask, kl_coef, estimator)
        seen["rewards"].append({"scores": scores.clone(), "rewards": rewards.clone(), "kl": kl.clone()})
        return rewards, kl

    monkeypatch.setattr(P, "policy_loss", spy_pl)
    monkeypatch.setattr(P, "compute_rewards", spy_cr)
    use_rollout(monkeypatch, rollout)
    stats = P.ppo_step(policy, vh, opt, tok, None, PROMPTS, cfg, KLController(cfg.kl_coef),
                       torch.Generator().manual_seed(gen_seed), reward_fn=reward_fn, reward_norm=norm)
    return stats, seen, policy, vh, opt


def _first_perm(B, seed=0):
    return torch.randperm(B, generator=torch.Generator().manual_seed(seed))


def _gae_whitened_by_hand(rewards, mask, gamma, lam, whiten=True):
    """V = 0 (the value head starts at zero): A_t = sum_k (gamma lam)^k r_{t+k} over the row's real tokens, then
    mean 0 / population std 1 over the real tokens of the whole batch, padding left at 0."""
    B, R = rewards.shape
    adv = [[0.0] * R for _ in range(B)]
    for i in range(B):
        n = int(mask[i].sum())
        acc = 0.0
        for t in reversed(range(n)):
            acc = float(rewards[i, t]) + gamma * lam * acc
            adv[i][t] = acc
    real = [adv[i][t] for i in range(B) for t in range(R) if mask[i, t]]
    if whiten:
        mean = sum(real) / len(real)
        std = math.sqrt(sum((a - mean) ** 2 for a in real) / len(real) + 1e-8)
        adv = [[(adv[i][t] - mean) / std if mask[i, t] else 0.0 for t in range(R)] for i in range(B)]
    return torch.tensor(adv)


def test_advantages_are_whitened_over_response_tokens_only(tok, monkeypatch):
    """The advantages reaching the loss: GAE of the rewards, whitened with mean and std over real response tokens
    (rows of 4, 3, 2 and 5 tokens in a width of 5: 6 pads that must not enter the statistics)."""
    ro = fixed_rollout(tok)
    cfg = _cfg(missing_eos_penalty=-1.0)
    stats, seen, *_ = _step(tok, monkeypatch, ro, cfg)
    assert stats["skipped_batches"] == 0
    mask = ro.response_mask
    rewards = seen["rewards"][0]["rewards"]
    want = _gae_whitened_by_hand(rewards, mask, cfg.gamma, cfg.lam)
    perm = _first_perm(4)
    got = seen["loss_inputs"][0]
    assert torch.equal(got["mask"], mask[perm].float())
    m = got["mask"].bool()
    torch.testing.assert_close(got["adv"][m], want[perm][m], rtol=0, atol=1e-5)
    real = got["adv"][m]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_padding_token_ids_do_not_change_advantages_or_logprobs(tok, monkeypatch):
    """The same rollout with junk token ids on the padded response positions gives the same log-probs,
    rewards and advantages on every real token."""
    junk = tok.convert_tokens_to_ids("z")
    cfg = _cfg(kl_coef=0.05, missing_eos_penalty=-1.0)
    _, clean, *_ = _step(tok, monkeypatch, fixed_rollout(tok), cfg)
    _, dirty, *_ = _step(tok, monkeypatch, fixed_rollout(tok, pad_fill=junk), cfg)
    m = clean["loss_inputs"][0]["mask"].bool()
    for k in ("adv", "old_logp", "new_logp"):
        torch.testing.assert_close(dirty["loss_inputs"][0][k][m], clean["loss_inputs"][0][k][m], rtol=0, atol=1e-6)
    torch.testing.assert_close(dirty["rewards"][0]["rewards"], clean["rewards"][0]["rewards"], rtol=0, atol=1e-6)


def test_missing_eos_penalty_lands_after_normalisation_on_cut_responses_only(tok, monkeypatch):
    """Raw scores (0.5 per character - 1) of "abc", "de", "fg" (cut: no EOS), "hijk" are 0.5, 0, 0, 1; with gain
    0.5 and bias -1.5 they are -1.25, -1.5, -1.5, -1.0; the penalty -1 goes to "fg" alone, after normalisation
    (-2.5, not 0.5 * (0 - 1) - 1.5 = -2.0), on its last token; every other token gets 0 (kl_coef = 0)."""
    ro = fixed_rollout(tok)
    assert ro.has_eos.tolist() == HAS_EOS == [True, True, False, True]
    stats, seen, *_ = _step(tok, monkeypatch, ro, _cfg(missing_eos_penalty=-1.0), norm=(0.5, -1.5))
    want = [-1.25, -1.5, -2.5, -1.0]
    assert seen["rewards"][0]["scores"].tolist() == pytest.approx(want)
    rewards = seen["rewards"][0]["rewards"]
    lengths = ro.response_mask.sum(1).tolist()
    assert lengths == [4, 3, 2, 5]
    expected = torch.zeros_like(rewards)
    for i, n in enumerate(lengths):
        expected[i, n - 1] = want[i]
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-6)
    # the logged scores are the reward model's, raw and normalised, without the penalty
    assert stats["score"] == pytest.approx(sum([0.5, 0.0, 0.0, 1.0]) / 4)
    assert stats["score_normalized"] == pytest.approx(sum([-1.25, -1.5, -1.5, -1.0]) / 4)
    assert stats["eos_rate"] == pytest.approx(0.75)
    # a penalty of 0 changes nothing; a positive one is a bonus (its sign is the config's, never flipped)
    _, none, *_ = _step(tok, monkeypatch, ro, _cfg(missing_eos_penalty=0.0), norm=(0.5, -1.5))
    assert none["rewards"][0]["scores"].tolist() == pytest.approx([-1.25, -1.5, -1.5, -1.0])
    _, bonus, *_ = _step(tok, monkeypatch, ro, _cfg(missing_eos_penalty=0.25), norm=(0.5, -1.5))
    assert bonus["rewards"][0]["scores"].tolist() == pytest.approx([-1.25, -1.5, -1.25, -1.0])


def test_logprobs_in_the_update_are_of_the_tempered_softmax(tok, monkeypatch):
    """With temperature 0.5, the old (and, before any update, the new) log-probs reaching the loss are
    log softmax(logits / 0.5) of each response token, and the reference is tempered alike (KL exactly 0 while the
    adapter is still zero)."""
    T = 0.5
    ro = fixed_rollout(tok)
    policy = make_policy(tok)
    ids, P_len = ro.input_ids, ro.query_ids.shape[1]
    with torch.no_grad():  # prompts of equal length: no left padding, plain positions
        logits = policy(input_ids=ids).logits.float()
    R = ro.response_ids.shape[1]

    def by_hand(temp):
        lp = torch.zeros(4, R)
        for i in range(4):
            for j in range(int(ro.response_mask[i].sum())):
                lp[i, j] = torch.log_softmax(logits[i, P_len - 1 + j] / temp, -1)[ids[i, P_len + j]]
        return lp

    _, seen, *_ = _step(tok, monkeypatch, ro, _cfg(temperature=T, kl_coef=0.1), policy=policy)
    perm = _first_perm(4)
    got = seen["loss_inputs"][0]
    m = got["mask"].bool()
    want, plain = by_hand(T)[perm], by_hand(1.0)[perm]
    torch.testing.assert_close(got["old_logp"][m], want[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["new_logp"][m], want[m], rtol=0, atol=1e-5)
    assert (want[m] - plain[m]).abs().max() > 0.05  # the temperature matters for these logits
    assert seen["rewards"][0]["kl"].abs().max().item() < 1e-6


def test_non_finite_gradient_skips_every_minibatch_and_changes_nothing(tok, monkeypatch):
    """A finite loss whose gradient is NaN (a hook poisons the value head's): each minibatch is skipped and counted,
    no weight moves and AdamW never takes a step (its moments stay empty)."""
    policy, vh = make_policy(tok), ValueHead(32)
    vh.summary.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    params = _trainable(policy, vh)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    stats, seen, *_ = _step(tok, monkeypatch, fixed_rollout(tok), _cfg(mini_batch_size=2, ppo_epochs=2),
                            policy=policy, vh=vh, optimizer=opt)
    assert len(seen["loss_inputs"]) == 4 and all(torch.isfinite(x["adv"]).all() for x in seen["loss_inputs"])
    assert stats["skipped_batches"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert not opt.state
    assert math.isnan(stats["policy_loss"])  # no minibatch was used: nothing to average


def test_a_nan_score_skips_only_the_minibatches_holding_it(tok, monkeypatch):
    """One sequence scored NaN (without whitening, NaN stays in its own row): the minibatch holding it is skipped
    in each epoch and counted; the other three are applied, and every weight stays finite."""
    policy, vh = make_policy(tok), ValueHead(32)
    params = _trainable(policy, vh)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)

    def reward(prompts_text, texts):
        return [float("nan") if t == "fg" else 1.0 for t in texts]

    stats, *_ = _step(tok, monkeypatch, fixed_rollout(tok), _cfg(mini_batch_size=1, ppo_epochs=2,
                                                                 whiten_advantages=False),
                      reward_fn=reward, policy=policy, vh=vh, optimizer=opt)
    assert stats["skipped_batches"] == 2
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    assert int(opt.state[vh.summary.weight]["step"]) == 6
    assert math.isfinite(stats["policy_loss"])
