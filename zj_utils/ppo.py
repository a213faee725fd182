"""Our PPO for RLHF (TRL 1.x dropped its PPOTrainer), written to be read.

One PPO iteration (`ppo_step`) is:

1. rollout      `generate_rollouts`: sample a response for each prompt with the policy;
2. score        `score_responses`: the frozen reward model reads `reward.reward_text(prompt, response)`, the
                input it was trained on; `shape_scores` normalises the score (gain and bias fitted once, on the
                SFT policy's answers, so that those score mean 0, std 1) and adds the missing-EOS penalty;
3. log-probs    `compute_logprobs`: policy (old) log-probs and values, and the reference
                log-probs, which are the same network with the LoRA adapter switched off;
4. rewards      `compute_rewards`: per token -kl_coef * KL(policy || ref), plus the score
                on the last response token;
5. advantages   `compute_gae` and `masked_whiten`;
6. update       `ppo_epochs` x minibatches of `policy_loss` + vf_coef * `value_loss`.

The pure pieces named above (all but `generate_rollouts` and `score_responses`) are in `ppo_maths.py`, the
checkpoints' save and load in `ppo_checkpoint.py`; this file is the iteration, the loop and the stage, top to bottom.

Shapes: B sequences, P prompt tokens (left-padded), R response tokens (right-padded).
Every [B, R] tensor comes with `mask` [B, R]: 1 on response tokens up to and including the
first EOS, 0 on the padding after it. Padding is masked with `torch.where` before any exp or sum, so whatever a
pad position holds (even inf or NaN) changes no loss, statistic or gradient.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .common import pad_id
from .config import PPOConfig
from .ppo_checkpoint import _cuda_devices, load_checkpoint, save_checkpoint
from .ppo_maths import (KLController, ValueHead, _keep, compute_gae, compute_logprobs, compute_rewards,
                        explained_variance, fit_reward_norm, kl_horizon, masked_mean, masked_whiten, policy_loss,
                        shape_scores, value_loss)


LOG_KEYS = ("step", "score", "score_normalized", "reward_with_kl", "kl", "kl_coef", "entropy", "policy_clipfrac",
            "approx_kl", "policy_loss", "value_loss", "value_clipfrac", "explained_variance",
            "response_length", "eos_rate", "tokens_per_s", "skipped_batches", "seconds")


# --------------------------------------------------------------------------- model pieces

def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch, else (0, 1). With several processes PPO is
    data-parallel: each rank rolls out its own share of the prompts, and gradients are averaged before every
    update, so all ranks hold the same adapter; rank 0 alone writes files."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Rollout:
    query_ids: torch.Tensor      # [B, P] left-padded prompts
    query_mask: torch.Tensor     # [B, P]
    response_ids: torch.Tensor   # [B, R] cut after the first EOS, then pad
    response_mask: torch.Tensor  # [B, R] 1 up to and including the first EOS
    has_eos: torch.Tensor        # [B] bool
    prompts_text: list           # the rendered prompts (what a `reward_fn` reads)
    gen_seconds: float = 0.0
    messages: Optional[list] = None  # the prompts as chat message lists (what the reward model's input is built from)

    @property
    def input_ids(self):
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def attention_mask(self):
        return torch.cat([self.query_mask, self.response_mask], 1)


def render_prompts(tokenizer, prompts: list) -> list[str]:
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]


@torch.no_grad()
def generate_rollouts(policy, tokenizer, prompts: list, cfg: PPOConfig) -> Rollout:
    """Sample one response per prompt (chat message lists) with the current policy."""
    texts = render_prompts(tokenizer, prompts)
    pad = pad_id(tokenizer)
    # the template already holds BOS where the model wants it
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    P = max(map(len, ids))
    q = torch.full((len(ids), P), pad, dtype=torch.long)
    qm = torch.zeros_like(q)
    for i, x in enumerate(ids):  # left padding, so every prompt ends where generation starts
        q[i, P - len(x):] = torch.tensor(x)
        qm[i, P - len(x):] = 1
    dev = _device(policy)
    t0 = time.perf_counter()
    out = policy.generate(
        input_ids=q.to(dev), attention_mask=qm.to(dev), do_sample=True,
        # set explicitly so that a checkpoint's generation_config.json (top_k=20, repetition
        # penalty, ...) cannot make the sampler differ from the softmax compute_logprobs scores
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, repetition_penalty=1.0,
        max_new_tokens=cfg.max_new_tokens, use_cache=True,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    gen_s = time.perf_counter() - t0
    resp = out[:, P:].cpu()
    is_eos = resp == tokenizer.eos_token_id
    # 1 up to and including the first EOS: the count of EOS strictly before t must be 0
    before = torch.cumsum(is_eos.long(), 1) - is_eos.long()
    rmask = (before == 0).long()
    resp = torch.where(rmask.bool(), resp, torch.full_like(resp, pad))
    return Rollout(q, qm, resp, rmask, is_eos.any(1), texts, gen_s, messages=list(prompts))


def response_texts(tokenizer, rollout: Rollout) -> list[str]:
    """Each response decoded up to, not including, its first EOS, special tokens dropped (as TRL's GRPO and
    RLOO decode completions): the answer text the reward model's input is built from."""
    eos = tokenizer.eos_token_id
    seqs = []
    for r, m in zip(rollout.response_ids, rollout.response_mask):
        ids = r[m.bool()].tolist()
        seqs.append(ids[:-1] if ids and ids[-1] == eos else ids)
    return tokenizer.batch_decode(seqs, skip_special_tokens=True)


@torch.no_grad()
def score_responses(reward_model, tokenizer, rollout: Rollout, reward_tokenizer=None,
                    reward_fn: Optional[Callable] = None) -> torch.Tensor:
    """Raw reward-model score per sequence [B] (float32, on CPU).

    The reward model reads `reward.reward_text(prompt messages, response text)` in its own tokenizer (the
    policy's unless `reward_tokenizer` is given): exactly the string it was trained on, so the score is read at
    the token training read it at. `reward_fn(prompts_text, responses_text) -> [B]` can stand in for a reward
    model."""
    from .reward import reward_scores

    texts = response_texts(tokenizer, rollout)
    if reward_fn is not None:
        return torch.as_tensor(reward_fn(rollout.prompts_text, texts), dtype=torch.float32).cpu()
    if rollout.messages is None:
        raise ValueError("score_responses needs the rollout's prompts as messages (Rollout.messages) to build "
                         "the reward model's input")
    return reward_scores(reward_model, reward_tokenizer or tokenizer, rollout.messages, texts,
                         batch_size=max(1, len(texts)))


# --------------------------------------------------------------------------- one iteration

def ppo_step(policy, value_head, optimizer, tokenizer, reward_model, prompts, cfg: PPOConfig,
             kl_ctl: KLController, generator: torch.Generator, reward_tokenizer=None,
             reward_fn=None, reward_norm: tuple[float, float] = (1.0, 0.0), rollout: Optional[Rollout] = None) -> dict:
    """One rollout + update on `prompts` (a batch of chat message lists); returns the step stats.
    `reward_norm` = (gain, bias) of the score normalisation (see `fit_reward_norm`). `rollout`, if given, is used
    instead of sampling a new one (a step on a rollout already shown, as notebook 05 takes)."""
    t0 = time.perf_counter()
    dev = _device(policy)
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())

    # 1-2. rollout and score
    ro = rollout if rollout is not None else generate_rollouts(policy, tokenizer, prompts, cfg)
    raw = score_responses(reward_model, tokenizer, ro, reward_tokenizer, reward_fn)
    gain, bias = reward_norm
    normed = gain * raw + bias
    scores = shape_scores(raw, ro.has_eos, gain, bias, cfg.missing_eos_penalty)

    # 3. old log-probs/values and reference log-probs, all without gradients
    ids, am, P = ro.input_ids.to(dev), ro.attention_mask.to(dev), ro.query_ids.shape[1]
    mask = ro.response_mask.to(dev).float()
    with torch.no_grad():
        old_logp, ent, old_values = compute_logprobs(policy, ids, am, P, cfg.temperature, value_head)
        with policy.disable_adapter():
            ref_logp, _, _ = compute_logprobs(policy, ids, am, P, cfg.temperature)

    # 4-5. rewards and advantages
    rewards, kl = compute_rewards(scores.to(dev), old_logp, ref_logp, mask, kl_ctl.value, cfg.kl_estimator)
    adv, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, mask)

    # 6. PPO epochs over shuffled minibatches
    acc = {k: [] for k in ("policy_loss", "policy_clipfrac", "approx_kl", "value_loss", "value_clipfrac")}
    skipped, B = 0, ids.shape[0]
    _, world = _dist()
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=generator)
        for start in range(0, B, cfg.mini_batch_size):
            mb = perm[start:start + cfg.mini_batch_size].to(dev)
            new_logp, _, new_values = compute_logprobs(policy, ids[mb], am[mb], P, cfg.temperature, value_head)
            pl, pcf, akl = policy_loss(new_logp, old_logp[mb], adv[mb], mask[mb], cfg.cliprange)
            vl, vcf = value_loss(new_values, old_values[mb], returns[mb], mask[mb], cfg.cliprange_value)
            loss = pl + cfg.vf_coef * vl
            optimizer.zero_grad(set_to_none=True)
            bad = torch.tensor(float(not torch.isfinite(loss)), device=dev)
            if world > 1:  # every rank must take the same branch, or the gradient all-reduce would hang
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if bad.item():
                skipped += 1  # a NaN/inf loss would poison AdamW's moments: drop the minibatch
                continue
            loss.backward()
            if world > 1:  # DDP by hand: average the (LoRA + value head) gradients over the ranks
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(gnorm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            for k, v in zip(acc, (pl, pcf, akl, vl, vcf)):
                acc[k].append(float(v.detach()))
    optimizer.zero_grad(set_to_none=True)

    seq_kl = kl.sum(1)
    kl_ctl_value = kl_ctl.value
    mean_kl = seq_kl.mean().detach()
    if world > 1:  # the KL coefficient must stay the same on every rank
        torch.distributed.all_reduce(mean_kl)
        mean_kl /= world
    kl_ctl.update(float(mean_kl), B * world)
    n_tokens = float(mask.sum())
    secs = time.perf_counter() - t0
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")
    return {
        "score": float(raw.mean()),
        "score_std": float(raw.std()) if B > 1 else 0.0,
        "score_normalized": float(normed.mean()),
        "reward_with_kl": float(rewards.sum(1).mean()),
        "kl": float(seq_kl.mean()),
        "kl_coef": kl_ctl_value,
        "entropy": float(masked_mean(ent, mask)),
        **{k: mean(v) for k, v in acc.items()},
        "explained_variance": explained_variance(old_values, returns, mask),
        "response_length": n_tokens / B,
        "eos_rate": float(ro.has_eos.float().mean()),
        "tokens_per_s": n_tokens / max(ro.gen_seconds, 1e-9),
        "skipped_batches": skipped,
        "seconds": secs,
    }


# --------------------------------------------------------------------------- reward normalisation

@torch.no_grad()
def sample_reward_norm(policy, tokenizer, reward_model, prompts: list, cfg: PPOConfig, seed: int = 0,
                       reward_tokenizer=None, reward_fn=None) -> tuple[float, float]:
    """(gain, bias) fitted on `cfg.norm_samples` answers of the start policy (the adapter switched off: the SFT
    model) to training prompts in a seeded order of their own. With several processes each samples its share
    and the moments are summed over all, so every rank gets the same gain and bias."""
    rank, world = _dist()
    if cfg.norm_samples < 2:
        raise ValueError(f"ppo.norm_samples must be at least 2 to fit a scale (got {cfg.norm_samples})")
    order = list(range(len(prompts)))
    random.Random(f"reward-norm-{seed}").shuffle(order)
    picks = [prompts[order[i % len(order)]] for i in range(cfg.norm_samples)][rank::world]
    raws = []
    with policy.disable_adapter():
        for i in range(0, len(picks), cfg.batch_size):
            ro = generate_rollouts(policy, tokenizer, picks[i:i + cfg.batch_size], cfg)
            raws.append(score_responses(reward_model, tokenizer, ro, reward_tokenizer, reward_fn))
    raw = torch.cat(raws).double() if raws else torch.zeros(0, dtype=torch.float64)
    if world == 1:
        return fit_reward_norm(raw)
    m = torch.tensor([len(raw), float(raw.sum()), float((raw ** 2).sum())], dtype=torch.float64,
                     device=_device(policy))
    torch.distributed.all_reduce(m)
    n, total, squares = m.tolist()
    mean = total / n
    std = math.sqrt(max(squares / n - mean ** 2, 0.0))
    return fit_reward_norm(torch.tensor([mean - std, mean + std]))  # the same mean and population std


# --------------------------------------------------------------------------- the loop

def train_ppo(policy, tokenizer, reward_model, prompts: list, cfg: PPOConfig, out_dir, seed: int = 0,
              reward_tokenizer=None, callback: Optional[Callable] = None,
              reward_fn: Optional[Callable] = None, resume: bool = False,
              probe: Optional[Callable] = None, reward_norm: Optional[tuple[float, float]] = None) -> dict:
    """PPO on a `peft.PeftModel` policy (its LoRA adapter and a new value head are trained;
    with the adapter disabled it is the frozen reference). `reward_model` is a frozen
    sequence-classification model with one label, or None with `reward_fn` given instead.
    Writes out_dir/ppo_log.jsonl, out_dir/adapter/ and out_dir/value_head.safetensors, and a checkpoint every
    `cfg.save_every` steps; with `resume=True` it continues from the last complete one, and the log and the
    final weights are the same as those of an uninterrupted run.

    `probe(policy) -> dict`, if given, is called before training, every `cfg.judge_every` steps and at the end;
    its rows go to out_dir/judge_probe.jsonl. It only observes: it runs on a fork of the RNGs, and nothing in
    training reads it. `reward_norm` = (gain, bias), if given with `cfg.normalize_reward`, is used instead of
    fitting one (runs that share a start policy and reward model can share one fit, as a kl_coef sweep does)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if reward_model is None and reward_fn is None:
        raise ValueError("train_ppo needs a reward_model or a reward_fn")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _dist()
    main = rank == 0
    torch.manual_seed(seed + rank)  # generate() samples from the global RNG; each rank its own samples
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    if reward_model is not None:
        reward_model.eval().requires_grad_(False)
    # eval mode throughout: no dropout, so old and new log-probs agree before the first update
    policy.eval()
    hidden = policy.get_base_model().config.get_text_config().hidden_size
    value_head = ValueHead(hidden).to(_device(policy))
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    horizon = kl_horizon(cfg, world)
    kl_ctl = KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.target_kl, horizon)
    probing = probe is not None and main and cfg.judge_every > 0

    log_path, probe_path = out_dir / "ppo_log.jsonl", out_dir / "judge_probe.jsonl"
    history, probe_rows, total_skipped, t_start = [], [], 0, time.perf_counter()
    order: list = []
    if not resume and main:  # a fresh run must not leave an older run's checkpoints for a later --resume to pick up
        (out_dir / "latest.json").unlink(missing_ok=True)
        probe_path.unlink(missing_ok=True)
        for old in out_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
    state = load_checkpoint(out_dir, policy, value_head, optimizer, kl_ctl, gen) if resume else None
    first = 1
    norm = (1.0, 0.0)
    if state is not None:
        history, order, first = state["history"], state["order"], state["step"] + 1
        probe_rows = state.get("probe_history", [])
        total_skipped = sum(r["skipped_batches"] for r in history)
        version, internal, gauss = state["python_rng"]
        rng.setstate((version, tuple(internal), gauss))
        if cfg.normalize_reward:  # never refitted: new samples would give another gain and bias mid-run
            if "reward_norm" not in state:
                raise ValueError(f"{out_dir}: the checkpoint holds no reward normalisation; resume it with "
                                 "normalize_reward=False, or start the run again")
            norm = tuple(state["reward_norm"])
    elif cfg.normalize_reward and reward_norm is not None:
        norm = tuple(reward_norm)
    elif cfg.normalize_reward:
        norm = sample_reward_norm(policy, tokenizer, reward_model, prompts, cfg, seed, reward_tokenizer, reward_fn)

    def run_probe(step: int) -> None:
        with torch.random.fork_rng(devices=_cuda_devices()):
            row = {"step": step, **probe(policy)}
        probe_rows.append(row)
        probe_log.write(json.dumps(row) + "\n")
        probe_log.flush()

    with open(log_path if main else os.devnull, "w") as log, \
            open(probe_path if probing else os.devnull, "w") as probe_log, \
            tqdm(range(first, cfg.steps + 1), desc="ppo", initial=first - 1, total=cfg.steps, disable=not main) as bar:
        for row in history:  # the resumed log starts with the steps the checkpoint holds
            if row["step"] % cfg.log_every == 0:
                log.write(json.dumps(row) + "\n")
        for row in probe_rows:
            probe_log.write(json.dumps(row) + "\n")
        if probing and state is None:
            run_probe(0)  # the SFT policy: the adapter starts at zero
        for step in bar:
            batch = []
            while len(batch) < cfg.batch_size * world:  # walk through shuffled epochs of the prompts
                if not order:
                    order = list(range(len(prompts)))
                    rng.shuffle(order)
                batch.append(prompts[order.pop()])
            batch = batch[rank::world]  # batch_size is per process, as a Trainer's per-device batch
            stats = {"step": step, **ppo_step(policy, value_head, optimizer, tokenizer, reward_model,
                                              batch, cfg, kl_ctl, gen, reward_tokenizer, reward_fn, norm)}
            total_skipped += stats["skipped_batches"]
            history.append(stats)
            if stats["skipped_batches"] and main:
                warnings.warn(f"PPO step {step}: {stats['skipped_batches']} minibatch update(s) skipped for a "
                              "non-finite loss or gradient norm", RuntimeWarning, stacklevel=2)
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.write(json.dumps(stats) + "\n")
                log.flush()
            bar.set_postfix(score=f"{stats['score']:.3f}", kl=f"{stats['kl']:.3f}")
            if probing and (step % cfg.judge_every == 0 or step == cfg.steps):
                run_probe(step)
            if main and cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_checkpoint(out_dir, step, policy, value_head, optimizer, kl_ctl,
                                {"history": history, "order": order, "python_rng": rng.getstate(),
                                 "generator": gen, "reward_norm": list(norm), "probe_history": probe_rows})
            if callback is not None:
                callback(step, stats)

    if total_skipped and main:
        n_updates = cfg.ppo_epochs * -(-cfg.batch_size // cfg.mini_batch_size) * len(history)
        warnings.warn(f"PPO: {total_skipped} of {n_updates} minibatch updates were skipped (non-finite loss or "
                      f"gradient); see skipped_batches in {log_path}", RuntimeWarning, stacklevel=2)
    if main:
        policy.save_pretrained(str(out_dir / "adapter"))
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
                  str(out_dir / "value_head.safetensors"))
    if world > 1:  # the others wait until the adapter is on disk: run_ppo merges it next
        torch.distributed.barrier()
    k = min(5, len(history))
    avg = lambda key, rows: float(sum(r[key] for r in rows) / len(rows)) if rows else float("nan")
    return {
        "steps": len(history),
        "score_first5": avg("score", history[:k]),
        "score_last5": avg("score", history[-k:]),
        "score_gain": avg("score", history[-k:]) - avg("score", history[:k]),
        "kl_mean": avg("kl", history),
        "kl_last5": avg("kl", history[-k:]),
        "reward_with_kl_last5": avg("reward_with_kl", history[-k:]),
        "response_length_last5": avg("response_length", history[-k:]),
        "eos_rate_last5": avg("eos_rate", history[-k:]),
        "reward_norm_gain": norm[0],
        "reward_norm_bias": norm[1],
        "kl_horizon": horizon,
        "final_kl_coef": kl_ctl.value,
        "skipped_batches": total_skipped,
        "judge_probe": {"first": probe_rows[0], "last": probe_rows[-1]} if probe_rows else None,
        "total_seconds": time.perf_counter() - t_start,
        "config": asdict(cfg),
    }


# --------------------------------------------------------------------------- the pipeline stage

TEST_KINDS = ("test_single", "test_safety", "test_multiturn")


def heldout_subset(world: Path, n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """A fixed, stratified pick of about n held-out test items: the first ceil(n / 3) of each test kind in a
    seeded shuffle (all of a kind that holds fewer). The pick's seed is its own, not the run's, so runs of every
    seed score the same prompts, and a smaller pick is a prefix of a larger one. Returns (items, count per kind)."""
    from .data import load_jsonl

    per = -(-n // len(TEST_KINDS))
    items, counts = [], {}
    for name in TEST_KINDS:
        recs = load_jsonl(Path(world) / f"{name}.jsonl")
        random.Random(f"heldout-{name}-{seed}").shuffle(recs)
        items += recs[:per]
        counts[name] = len(recs[:per])
    return items, counts


def judge_probe_fn(reward_model, tokenizer, items: list[dict], kg: dict, max_new_tokens: int, batch_size: int):
    """The probe `train_ppo` logs: greedy answers of the policy to `items`, their mean reward-model score and the
    rule judge's mean safety / professionalism / fluency and unsafe rate. RM score rising while the judge's
    scores fall is over-optimisation of the reward model."""
    from .inference import generate_chat
    from .annotator import assess
    from .reward import score_conversations

    convs = [it["messages"] for it in items]

    def probe(policy) -> dict:
        answers = [a[0] for a in generate_chat(policy, tokenizer, convs, max_new_tokens, batch_size=batch_size)]
        rm = score_conversations(reward_model, tokenizer,
                                 [c + [{"role": "assistant", "content": a}] for c, a in zip(convs, answers)])
        verdicts = [assess(a, it.get("expect", {}), kg) for a, it in zip(answers, items)]
        mean = lambda xs: round(sum(xs) / len(xs), 4)
        return {"rm_score": round(rm.mean().item(), 4),
                "judge_safety": mean([v.safety for v in verdicts]),
                "judge_professionalism": mean([v.professionalism for v in verdicts]),
                "judge_fluency": mean([v.fluency for v in verdicts]),
                "judge_unsafe_rate": mean([float(v.unsafe) for v in verdicts]),
                "n": len(items)}

    return probe


def run_ppo(preset, out, seed: int = 0, resume: bool = False) -> dict:
    """Stage 4: PPO on the SFT model (QLoRA: nf4 base + a fresh LoRA adapter) against the reward model, on the
    ranking prompts; held-out prompts (a stratified pick of the three test sets) are scored before and after
    with greedy answers, and a smaller pick is judged by both the reward model and the rule judge during training
    (judge_probe.jsonl)."""
    from .common import (begin_stage, load_model, load_tokenizer, merge_adapter, read_json, require, world_dir,
                         write_metrics)
    from .data import load_jsonl
    from .inference import generate_chat
    from .config import LoraSpec
    from .reward import load_reward_model, score_conversations
    from .training import prepare_qlora

    from accelerate import PartialState

    cfg = preset.ppo
    state = PartialState()  # joins the process group under torchrun / accelerate launch (see _dist)
    with state.main_process_first():
        d, timer = begin_stage("ppo", preset, out, seed, resume, ppo=cfg, model=preset.model, quant=preset.quant)
    world = world_dir(out)
    prompts = [r["messages"] for r in load_jsonl(world / "rank_prompts.jsonl")]
    n_heldout = sum(len(load_jsonl(world / f"{name}.jsonl")) for name in TEST_KINDS)
    heldout_items, heldout_counts = heldout_subset(world, max(cfg.batch_size * 4, 32))
    heldout = [it["messages"] for it in heldout_items]
    sft_path = str(require(Path(out) / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    tokenizer = load_tokenizer(sft_path, preset.model.trust_remote_code)
    reward_model = load_reward_model(out, preset)
    lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules)
    policy = prepare_qlora(load_model(sft_path, preset.model, preset.quant), lora, quantized=preset.quant.load_in_4bit)
    probe_items, _ = heldout_subset(world, cfg.judge_probe_prompts)
    probe = judge_probe_fn(reward_model, tokenizer, probe_items, read_json(world / "world.json"), cfg.max_new_tokens,
                           cfg.batch_size) if cfg.judge_every > 0 else None

    def heldout_score() -> float:
        answers = generate_chat(policy, tokenizer, heldout, cfg.max_new_tokens, batch_size=cfg.batch_size)
        convs = [h + [{"role": "assistant", "content": a[0]}] for h, a in zip(heldout, answers)]
        return round(score_conversations(reward_model, tokenizer, convs).mean().item(), 4)

    before = heldout_score()  # the adapter starts at zero: this is the SFT model
    summary = train_ppo(policy, tokenizer, reward_model, prompts, cfg, d, seed, resume=resume, probe=probe)
    after = heldout_score()
    if state.is_main_process:
        merge_adapter(sft_path, d / "adapter", d / "merged", preset.model, tokenizer=tokenizer)
    metrics = {k: v for k, v in summary.items() if k not in ("config", "total_seconds")} | {
        "prompts": len(prompts), "heldout_prompts": len(heldout), "heldout_prompts_per_kind": heldout_counts,
        "heldout_prompts_not_scored": n_heldout - len(heldout),  # a cap on the cost of scoring
        "judge_probe_prompts": len(probe_items) if probe else 0,
        "heldout_score_before": before, "heldout_score_after": after}
    # wall-clock times apart, so that metrics.json is the same bytes for the same preset and seed
    timings = {"seconds": timer(), "train_seconds": round(summary["total_seconds"], 2)}
    return write_metrics(d, metrics, timings)  # the main process writes; every rank waits for it there


# --------------------------------------------------------------------------- the mechanism, shown (notebook 05)

def token_table(tokenizer, rollout: Rollout, row: int, columns: dict) -> list[dict]:
    """One dict per response token of sequence `row` (those the response mask keeps: up to and including the first
    EOS): its position t, the token as text, and the value at (row, t) of each [B, R] tensor in `columns` (e.g.
    logp, ref_logp, kl, reward, value, advantage, return), as floats."""
    keep = rollout.response_mask[row].bool()
    ids = rollout.response_ids[row]
    out = []
    for t in range(int(keep.shape[0])):
        if not keep[t]:
            continue
        rec = {"t": t, "token": tokenizer.decode([int(ids[t])])}
        for name, x in columns.items():
            rec[name] = float(x[row, t])
        out.append(rec)
    return out


@torch.no_grad()
def ratio_stats(policy, rollout: Rollout, old_logp, advantages, cfg: PPOConfig) -> dict:
    """What the next PPO epoch sees on `rollout` after an update: the policy's new log-probs, the probability
    ratio new/old per token (1 on padding), where the clip is active per token (1.0: the clipped term is the
    larger loss, so the token's gradient is 0), and `policy_loss`'s clip fraction (the mean of that), approximate
    KL and loss against `old_logp` and `advantages` (those of the rollout, as ppo_step computed them)."""
    dev = _device(policy)
    ids, am, P = rollout.input_ids.to(dev), rollout.attention_mask.to(dev), rollout.query_ids.shape[1]
    mask = rollout.response_mask.to(dev).float()
    new_logp, _, _ = compute_logprobs(policy, ids, am, P, cfg.temperature)
    loss, clipfrac, approx_kl = policy_loss(new_logp, old_logp.to(dev), advantages.to(dev), mask, cfg.cliprange)
    ratio = torch.exp(_keep(new_logp - old_logp.to(dev), mask))
    adv = advantages.to(dev)
    clipped = _keep((-adv * torch.clamp(ratio, 1 - cfg.cliprange, 1 + cfg.cliprange) > -adv * ratio).float(), mask)
    return {"new_logp": new_logp.cpu(), "ratio": ratio.cpu(), "clipped": clipped.cpu(), "clipfrac": float(clipfrac),
            "approx_kl": float(approx_kl), "policy_loss": float(loss),
            "max_ratio_change": float(_keep((ratio - 1).abs(), mask).max())}
