"""The pure pieces of our PPO (zj_utils/ppo.py, which reads top to bottom as one iteration, the loop and the stage):
masked statistics, the KL estimate, GAE, the clipped policy and value losses, the score normalisation and shaping,
the KL coefficient's controller, the value head, the log-prob pass and the per-token rewards. Torch only: no files,
no tokenizer, no sampling.

Shapes: B sequences, P prompt tokens (left-padded), R response tokens (right-padded).
Every [B, R] tensor comes with `mask` [B, R]: 1 on response tokens up to and including the
first EOS, 0 on the padding after it. Padding is masked with `torch.where` before any exp or sum, so whatever a
pad position holds (even inf or NaN) changes no loss, statistic or gradient.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PPOConfig


# --------------------------------------------------------------------------- pure functions

def _keep(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x on the masked-in entries, 0 elsewhere. A select, not `x * mask`: inf * 0 and NaN * 0 are NaN, and so
    is the gradient that flows back through them."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    x = _keep(x, mask)
    mask = mask.to(x.dtype)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # population variance: "std 1 over the masked entries" then holds exactly
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to std 1 (and mean 0 if shift_mean), with mean and std taken over them
    alone; padding is left as is and changes nothing."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, x)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1",
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from the sampled token (Schulman's k1 / k3); 0 where `mask` is 0.

    k1 is unbiased but can be negative on a single token; k3 is always >= 0, also unbiased,
    with lower variance while the two distributions are close.
    """
    if mask is not None:  # before the exp of k3: a pad's extreme log-ratio would overflow to inf
        logp, ref_logp = _keep(logp, mask), _keep(ref_logp, mask)
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_r = ref_logp - logp
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown kl estimator {estimator!r} (use 'k1' or 'k3')")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation on [B, R]; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}.
    Padding after EOS is zeroed first, so the value after the last real token is 0 (the episode
    ends there) and padding adds nothing.
    """
    rewards, values = _keep(rewards, mask), _keep(values, mask)
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = _keep(adv, mask)
    return adv, _keep(adv + values, mask)


def policy_loss(new_logp, old_logp, advantages, mask, cliprange: float):
    """Clipped surrogate: loss, fraction of tokens where clipping was active, approx KL(old||new)."""
    # masked before the exp: a pad's log-ratio could overflow, and inf * 0 (or its gradient) is NaN
    log_ratio = _keep(new_logp - old_logp, mask)
    advantages = _keep(advantages, mask)
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(new_values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss (as PPO2): new values may not move more than cliprange_value from old."""
    new_values, old_values, returns = _keep(new_values, mask), _keep(old_values, mask), _keep(returns, mask)
    clipped = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    vf1 = (new_values - returns) ** 2
    vf2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    clipfrac = masked_mean((vf2 > vf1).float(), mask)
    return loss, clipfrac.detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values, returns, mask) -> float:
    var_ret = masked_var(returns, mask)
    return float(1.0 - masked_var(returns - values, mask) / var_ret) if var_ret > 0 else float("nan")


def fit_reward_norm(scores: torch.Tensor) -> tuple[float, float]:
    """(gain, bias) with gain * scores + bias of mean 0 and (population) std 1. Scores that are all equal
    carry no scale: then only the mean is removed."""
    scores = scores.double()
    mean, std = float(scores.mean()), float(scores.std(unbiased=False))
    if not std > 1e-6:
        warnings.warn(f"reward normalisation: the {len(scores)} SFT answers all score {mean:.4g}; only the mean "
                      "is removed", stacklevel=2)
        return 1.0, -mean
    return 1.0 / std, -mean / std


def shape_scores(raw: torch.Tensor, has_eos: torch.Tensor, gain: float = 1.0, bias: float = 0.0,
                 missing_eos_penalty: float = 0.0) -> torch.Tensor:
    """The score PPO maximises: the normalised reward-model score, then the missing-EOS penalty on responses
    that were cut at max_new_tokens (after normalisation, so it is in units of the SFT answers' score std)."""
    return gain * raw + bias + missing_eos_penalty * (~has_eos.bool()).to(raw.dtype)


class KLController:
    """Fixed KL coefficient, or the adaptive one of Ziegler et al. (2019) in its exponential form:
    beta <- beta * exp(clip(KL / target - 1, -0.2, 0.2) * n_samples / horizon).
    (Their 1 + x is its first order; the exponential stays positive when a step's n_samples / horizon is large.)
    A KL held far from target moves beta by e^(+-0.2 N / horizon) over N samples, so the horizon must be
    counted in the samples of the run: Ziegler's 10000 moves beta by 2% over a 960-sample run."""

    def __init__(self, init_kl_coef: float, adaptive: bool = False,
                 target: float = 6.0, horizon: int = 10000):
        if adaptive and (target <= 0 or horizon <= 0):
            raise ValueError(f"adaptive KL needs target_kl > 0 and horizon > 0 (got {target}, {horizon})")
        self.value, self.adaptive, self.target, self.horizon = init_kl_coef, adaptive, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= math.exp(error * n_steps / self.horizon)


def kl_horizon(cfg: PPOConfig, world: int = 1) -> int:
    """The adaptive controller's horizon in samples: cfg.horizon, or with 0 a tenth of the run's samples."""
    return cfg.horizon or max(1, cfg.steps * cfg.batch_size * world // 10)


# --------------------------------------------------------------------------- model pieces

class ValueHead(nn.Module):
    """V(s_t) as a linear read-out of the policy's last hidden state: the critic shares the
    policy's trunk (and its LoRA), so no second model copy is needed."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        # zero init: V = 0 at first, so early advantages are just the rewards-to-go
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def compute_logprobs(model, input_ids, attention_mask, context_length: int, temperature: float = 1.0,
                     value_head: Optional[ValueHead] = None):
    """Log-probs of the response tokens (those from `context_length` on) under softmax(logits / temperature),
    entropy per token and, with a value head, V at the state before each response token; all three are 0 on
    response positions the attention mask leaves out (padding). Returns (logp, entropy, values)."""
    # positions follow the attention mask, as in generate(), so left padding changes nothing
    pos = (attention_mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                output_hidden_states=value_head is not None, use_cache=False)
    # the state at t predicts token t+1: response token j comes from position context_length-1+j
    valid = attention_mask[:, context_length:].bool()
    logits = out.logits[:, context_length - 1:-1].float() / temperature
    # padding's logits are zeroed before the softmax, or a NaN there would give NaN gradients even when masked
    # later; in place on the scaled copy, so no [B, R, V] tensor more than before (a division's backward needs
    # neither its input nor its output)
    logits.masked_fill_(~valid.unsqueeze(-1), 0.0)
    # tokens the model's generation config forbids (the tiny model's byte-fallback tokens) are never sampled, so
    # the policy being scored is the one renormalised without them; a large finite value keeps entropy finite
    suppress = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    if suppress:
        logits[..., torch.as_tensor(suppress, device=logits.device)] = -1e9
    targets = input_ids[:, context_length:]
    logp = torch.gather(F.log_softmax(logits, -1), 2, targets.unsqueeze(-1)).squeeze(-1)
    entropy = entropy_from_logits(logits)
    values = None
    if value_head is not None:
        values = _keep(value_head(out.hidden_states[-1][:, context_length - 1:-1]), valid)
    return _keep(logp, valid), _keep(entropy, valid), values


def compute_rewards(scores, logp, ref_logp, mask, kl_coef: float, estimator: str = "k1"):
    """Per-token rewards [B, R]: -kl_coef * KL on every response token, plus the score on the
    last one. Returns (rewards, kl)."""
    kl = kl_penalty(logp, ref_logp, estimator, mask)
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards, kl
