"""A sweep of PPO's KL coefficient beta (`ppo.kl_coef`), the knob of the KL penalty of Ziegler et al. (2019) and
InstructGPT (Ouyang et al. 2022): short PPO runs from the same SFT model against the same reward model, one per
beta, each otherwise as the `ppo` stage trains (`train_ppo`, the preset's settings, a fixed beta, no checkpoints and
no judge probe; the reward normalisation is fitted once, on the SFT policy's answers, and shared by the runs). A
small beta lets the policy move far from the reference (large KL) to raise the reward model's score; a large beta
holds it near the reference at the cost of score.

Folders: OUT/ppo_kl_sweep/kl-<beta>/{ppo_log.jsonl, adapter/, value_head.safetensors, summary.json}. A run whose
summary.json holds the same settings and seed and is newer than the world, SFT and reward-model stages is read back,
not trained again (`reuse`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

SWEEP_DIR = "ppo_kl_sweep"


def sweep_config(preset, kl_coef: float, steps: int | None = None):
    """The preset's PPO settings with beta = `kl_coef` held fixed, `steps` steps (None: the preset's), no
    checkpoints and no judge probe (it only observes, and costs time)."""
    return dataclasses.replace(preset.ppo, kl_coef=float(kl_coef), adaptive_kl=False,
                               steps=int(steps or preset.ppo.steps), save_every=0, judge_every=0)


def sweep_row(summary: dict) -> dict:
    """One run's end point from its train_ppo summary: beta, mean KL to the reference per answer (nats), the reward
    model's raw score, the same score normalised (in SFT-answer stds: the units PPO maximises) and the
    KL-penalised reward, each a mean over the run's last (up to) 5 steps."""
    gain, bias = summary["reward_norm_gain"], summary["reward_norm_bias"]
    return {"kl_coef": summary["config"]["kl_coef"], "steps": summary["steps"], "kl": summary["kl_last5"],
            "score": summary["score_last5"], "score_normalized": gain * summary["score_last5"] + bias,
            "reward_with_kl": summary["reward_with_kl_last5"]}


def run_kl_sweep(preset, out, seed: int = 0, kl_coefs=(0.0, 0.2, 1.0), steps: int | None = None,
                 reuse: bool = True) -> list[dict]:
    """Train (or, with `reuse`, read back) one short PPO run per beta in `kl_coefs`; returns their `sweep_row`s in
    that order. Each run starts from the same seeded LoRA initialisation, as the `ppo` stage does."""
    import torch

    from .common import cpu_threads, load_model, load_tokenizer, read_json, require, set_seed, write_json
    from .data import load_jsonl
    from .stages import newer_than
    from .ppo import sample_reward_norm, train_ppo
    from .config import LoraSpec
    from .reward import load_reward_model
    from .training import prepare_qlora

    out = Path(out)
    inputs = [out / s / "metrics.json" for s in ("world", "sft", "rm")]
    sft_path = str(require(out / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    loaded: dict = {}
    rows = []
    for beta in kl_coefs:
        cfg = sweep_config(preset, beta, steps)
        d = out / SWEEP_DIR / f"kl-{cfg.kl_coef:g}"
        path = d / "summary.json"
        saved = read_json(path) if path.exists() else None
        want = json.loads(json.dumps(dataclasses.asdict(cfg)))
        if not (reuse and saved and saved.get("seed") == seed and saved.get("config") == want
                and newer_than(path, inputs)):
            if not loaded:
                torch.set_num_threads(cpu_threads())
                loaded["tok"] = load_tokenizer(sft_path, preset.model.trust_remote_code)
                loaded["rm"] = load_reward_model(out, preset)
                loaded["prompts"] = [r["messages"] for r in load_jsonl(out / "world" / "rank_prompts.jsonl")]
            set_seed(seed)  # the same LoRA initialisation for every beta
            lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.lora_target_modules)
            policy = prepare_qlora(load_model(sft_path, preset.model, preset.quant), lora,
                                   quantized=preset.quant.load_in_4bit)
            if cfg.normalize_reward and "norm" not in loaded:  # one fit for all: same SFT policy, same RM
                torch.manual_seed(seed)
                loaded["norm"] = sample_reward_norm(policy, loaded["tok"], loaded["rm"], loaded["prompts"], cfg, seed)
            summary = train_ppo(policy, loaded["tok"], loaded["rm"], loaded["prompts"], cfg, d, seed,
                                reward_norm=loaded.get("norm"))
            summary.pop("total_seconds", None)
            saved = {"seed": seed, **summary}
            write_json(path, saved)
            del policy
        rows.append(sweep_row(saved))
    return rows
