"""Presets as data: one dataclass `Config` per stage, and a preset = overrides of those defaults.

Switching from the embedded tiny default to a real model on a GPU is one flag: `--preset NAME`.
Any field can also be overridden from the command line: `--set sft.learning_rate=1e-4`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from .align import AlignConfig
from .common import ZJError
from .ppo import PPOConfig
from .world import WorldConfig


@dataclass
class ModelConfig:
    # "tiny" = the LLaMA-architecture stand-in built by `zj base`; otherwise a hub id or a folder.
    name_or_path: str = "tiny"
    trust_remote_code: bool = False
    dtype: str = "float32"  # bfloat16 on a GPU
    # The tiny model's shape and its brief from-scratch training on general (non-medical) text.
    vocab_size: int = 2400
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    max_length: int = 256
    base_steps: int = 400
    base_batch_size: int = 16
    base_block_size: int = 128
    base_learning_rate: float = 3e-3


@dataclass
class QuantConfig:
    load_in_4bit: bool = True  # QLoRA: nf4 weights + double quantisation, LoRA on top
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"  # bfloat16 on a GPU


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list = "all-linear"
    modules_to_save: list = field(default_factory=list)


@dataclass
class PretrainConfig:
    lora: LoraSpec = field(default_factory=lambda: LoraSpec(r=32, alpha=64, modules_to_save=["embed_tokens", "lm_head"]))
    learning_rate: float = 3e-3
    epochs: int = 45  # each epoch packs the documents in a new order; facts need many passes in a tiny model
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    block_size: int = 128
    warmup_ratio: float = 0.05
    max_texts: int = -1
    save_every: int = 100  # checkpoint every N optimizer steps (0: never); `zj pretrain --resume` continues from it


@dataclass
class SFTStageConfig:
    # Mixing ratios of the four SFT kinds (+ the safety kind), as fractions of each kind's examples used.
    mix: dict = field(default_factory=lambda: {"multi_turn": 1.0, "single": 1.0, "nlp": 1.0, "general": 1.0, "safety": 1.0})
    multiturn_path: str = ""  # empty = the synthetic world's sft_multiturn.json; else a CMtMedQA-shaped file
    init_from: str = "pretrain"  # "pretrain" (the paper) or "base" (ablation: no continued pre-training)
    lora: LoraSpec = field(default_factory=lambda: LoraSpec(r=32, alpha=64))
    learning_rate: float = 3e-3
    epochs: float = 12.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    save_every: int = 100  # checkpoint every N optimizer steps (0: never); `zj sft --resume` continues from it
    # TRL's best-fit-decreasing packing, padding-free: dialogues share rows, attention stays inside each dialogue
    # (position_ids) and the loss stays on doctor turns. Off by default: it changes the steps per epoch, and on
    # CPU/SDPA it buys little (docs/SCALING.md has the figures).
    packing: bool = False


@dataclass
class RMStageConfig:
    n_samples: int = 4  # answers per prompt, ranked with ties (the paper's ranking tool shows 4)
    temperature: float = 1.0
    top_p: float = 0.95
    # one temperature per candidate (len = n_samples) instead of `temperature` for all: empty = off
    temperatures: list = field(default_factory=list)
    max_new_tokens: int = 96
    max_prompts: int = -1
    dev_fraction: float = 0.15  # prompts held out to pick the stopping point (early stopping on dev accuracy)
    test_fraction: float = 0.15  # prompts held out to report accuracy on, never used to choose anything
    # share of the training prompts kept (whole prompts, seeded; dev and test unchanged): learning curves
    # against the amount of ranked data (benchmarks/rm_learning_curve.py); 1.0 = all
    train_fraction: float = 1.0
    evals_per_epoch: int = 2  # dev evaluations per epoch
    patience: int = 3  # stop after this many dev evaluations without a new best; the best weights are kept
    init_from: str = "pretrain"  # the stage whose merged model the reward model starts from: pretrain (paper) or sft
    lora: LoraSpec = field(default_factory=lambda: LoraSpec(r=16, alpha=32, modules_to_save=["score"]))
    learning_rate: float = 1e-3
    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 320
    save_every: int = 100  # checkpoint every N optimizer steps (0: never); `zj rm --resume` continues from it


@dataclass
class EvalConfig:
    max_new_tokens: int = 96
    batch_size: int = 32
    max_items: int = -1  # per test set; -1 = all
    repetition_penalty: float = 1.0
    models: list = field(default_factory=lambda: ["base", "sft", "ppo"])
    # The test files every model answers: "world" = this run's synthetic test_multiturn/test_single/test_safety;
    # else a file any loader reads (data.load_test_records: CMtMedQA, Huatuo-26M, chat JSONL), relative paths
    # from the working directory or else the repository's root
    test_sets: list = field(default_factory=lambda: ["world"])
    # Who judges ours against each opponent: "rule" (knows the synthetic world's truth, so judges only its sets),
    # "openai" (any OpenAI-compatible API: GPT-4, vLLM, llama.cpp; key from $OPENAI_API_KEY) or "local" (an HF model)
    judge: str = "rule"
    judge_model: str = ""  # openai: the model name (e.g. gpt-4o); local: the model's folder or hub id
    judge_base_url: str = ""  # openai: the API's URL, e.g. http://localhost:8000/v1 ("": $OPENAI_BASE_URL or OpenAI)
    # Answers of systems we cannot run here, {name: JSONL of {"id", "answer"} per test item}, e.g.
    # {"ChatGPT": "answers/chatgpt.jsonl"}; our final model is judged against each, as against our earlier stages
    baselines: dict = field(default_factory=dict)
    n_boot: int = 1000  # bootstrap resamples of the items for the win/tie/loss intervals


@dataclass
class Preset:
    name: str = "tiny"
    description: str = ""
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# The paper's test sets (Figures 4 and 5): CMtMedQA's, shipped in data/, and Huatuo-26M's, as
# `zj data fetch huatuo26m-test` writes it. Judged by an LLM: the rule judge knows only the synthetic world.
REAL_TEST_SETS = ["data/cmtmedqa/CMtMedQA_test.json", "data/raw/huatuo26m-test/test_datasets.jsonl"]

# Each preset is a dict of overrides on the defaults above: data, not branching code.
PRESETS: dict[str, dict] = {
    "tiny": {
        "description": "Embedded default: tiny LLaMA built locally, synthetic world, CPU, minutes.",
        # Candidates to rank from four temperatures: at 1.0 alone most answers of a 2.7M model are word salad and
        # the reward model's held-out accuracy was 0.60 (0.67 at 0.7 alone); one candidate per temperature gives
        # answers both sensible and different, 0.73 (seed 0, 1,008 prompts; issue 12's closing note).
        "rm": {"temperatures": [0.3, 0.6, 0.9, 1.2], "top_p": 0.9},
    },
    "smoke": {
        "description": "Tests: the tiny pipeline shrunk to seconds per stage. Numbers mean nothing.",
        "world": {"n_diseases": 8, "passages_per_disease": 3, "n_general_texts": 300, "sft_single_per_disease": 2,
                  "sft_multiturn_per_disease": 2, "n_sft_nlp": 16, "n_sft_general": 16, "sft_safety_per_disease": 2,
                  "rank_prompts_per_disease": 2, "test_per_disease": 1, "heldout_per_disease": 1},
        "model": {"vocab_size": 900, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2,
                  "max_length": 160, "base_steps": 20, "base_batch_size": 8, "base_block_size": 64},
        # save_every: checkpoints every other step, so the kill-and-resume tests have something to resume from
        "pretrain": {"epochs": 2, "max_steps": 6, "batch_size": 8, "block_size": 64, "save_every": 2},
        "sft": {"max_steps": 6, "batch_size": 8, "max_length": 160, "save_every": 2},
        # rm: every step, since its step count depends on how many sampled answers tie (2 steps on 2026-11-30)
        "rm": {"max_prompts": 12, "max_new_tokens": 24, "epochs": 1.0, "batch_size": 8, "max_length": 200,
               "save_every": 1},
        "ppo": {"steps": 3, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 16,
                "save_every": 1},
        "align": {"max_steps": 2, "batch_size": 4, "num_generations": 2, "max_completion_length": 16,
                  "max_length": 200},
        "eval": {"max_new_tokens": 24, "max_items": 6},
    },
    "smoke-rl": {
        "description": "Tests of RLHF: smoke-sized models, trained just long enough that the SFT model ends its "
                       "answers and the reward model has a signal for PPO to climb (seconds per stage).",
        "base": "smoke",
        "world": {"rank_prompts_per_disease": 6},
        "model": {"base_steps": 150},
        "pretrain": {"max_steps": -1, "epochs": 4, "save_every": 0},
        "sft": {"max_steps": -1, "epochs": 10.0, "save_every": 0},
        "rm": {"max_prompts": -1, "epochs": 4.0, "save_every": 0},
        "ppo": {"steps": 60, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 2, "max_new_tokens": 24,
                "learning_rate": 3e-4, "kl_coef": 0.2, "save_every": 0},
    },
    "qwen2.5-0.5b": {
        "description": "A small real chat model on one 24 GB GPU with QLoRA, trained on the synthetic world, "
                       "evaluated on the real CMtMedQA and Huatuo-26M test sets by an LLM judge "
                       "(`zj estimate --preset qwen2.5-0.5b --stage S` for each stage's memory).",
        "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "dtype": "bfloat16", "max_length": 1024},
        "quant": {"compute_dtype": "bfloat16"},
        "pretrain": {"learning_rate": 2e-4, "epochs": 1, "batch_size": 4, "grad_accum": 4, "block_size": 1024,
                     "lora": {"r": 16, "alpha": 32, "modules_to_save": []}},
        "sft": {"learning_rate": 2e-4, "epochs": 2.0, "batch_size": 4, "grad_accum": 4, "max_length": 1024,
                "lora": {"r": 16, "alpha": 32}},
        # rm and ppo batches sized by `zj estimate` to fit 24 GB (8 pairs: ~38 GiB; 32 rollouts: ~39 GiB)
        "rm": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "learning_rate": 2e-4, "batch_size": 4,
               "max_length": 1024},
        "ppo": {"steps": 400, "batch_size": 16, "mini_batch_size": 4, "max_new_tokens": 256, "learning_rate": 1e-5},
        "eval": {"max_new_tokens": 256, "batch_size": 16, "repetition_penalty": 1.1,
                 "test_sets": REAL_TEST_SETS, "judge": "openai", "judge_model": "gpt-4o"},
    },
    "zhongjing-13b": {
        "description": "The paper's set-up (Ziya-LLaMA-13B base, the public training scripts) with QLoRA on one 40-80 GB GPU. "
                       "Ziya is published as delta weights against LLaMA-13B: rebuild it once with `zj delta apply` "
                       "and run with --set model.name_or_path=TARGET_DIR (stages refuse the delta itself).",
        "model": {"name_or_path": "IDEA-CCNL/Ziya-LLaMA-13B-v1", "dtype": "bfloat16", "max_length": 2048},
        "quant": {"compute_dtype": "bfloat16"},
        "pretrain": {"learning_rate": 5e-5, "epochs": 3, "batch_size": 4, "grad_accum": 4, "block_size": 2048,
                     "lora": {"r": 16, "alpha": 32, "modules_to_save": []}},
        "sft": {"learning_rate": 2e-4, "epochs": 2.0, "batch_size": 4, "grad_accum": 4, "max_length": 2048,
                "lora": {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}},
        "rm": {"temperature": 0.3, "top_p": 0.9, "max_new_tokens": 512, "learning_rate": 7e-4, "epochs": 10.0,
               "batch_size": 16, "dev_fraction": 0.1, "max_length": 2048,
               "lora": {"r": 32, "alpha": 64, "modules_to_save": ["score"]}},
        "ppo": {"steps": 8500, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 512,
                "learning_rate": 1e-5},
        "eval": {"max_new_tokens": 512, "batch_size": 8, "repetition_penalty": 1.2,
                 "test_sets": REAL_TEST_SETS, "judge": "openai", "judge_model": "gpt-4o"},
    },
}


def _apply(obj, overrides: dict, where: str):
    for key, value in overrides.items():
        if key == "description" and where == "preset":
            obj.description = value
            continue
        if not hasattr(obj, key):
            raise ZJError(f"Unknown setting '{where}.{key}'. Known: {', '.join(f.name for f in dataclasses.fields(obj))}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, copy.deepcopy(value))
    return obj


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _lineage(name: str) -> list[dict]:
    chain, seen = [], set()
    while name:
        if name in seen or name not in PRESETS:
            raise ZJError(f"Preset chain broken at '{name}' (unknown or circular 'base').")
        seen.add(name)
        chain.append(PRESETS[name])
        name = PRESETS[name].get("base", "")
    return chain[::-1]


def get_preset(name: str, overrides: list[str] | dict | None = None) -> Preset:
    """Build a preset by name; `overrides` are 'section.field=value' strings (values parsed as JSON when they can be)."""
    if name not in PRESETS:
        raise ZJError(f"Unknown preset '{name}'. Known presets: {', '.join(PRESETS)}.")
    preset = Preset(name=name)
    for spec in _lineage(name):  # a preset may build on another ("base"): apply the ancestor's overrides first
        _apply(preset, {k: v for k, v in spec.items() if k != "base"}, "preset")
    if isinstance(overrides, dict):
        return _apply(preset, overrides, "preset")
    for item in overrides or []:
        if "=" not in item:
            raise ZJError(f"Bad override '{item}': expected section.field=value, e.g. sft.learning_rate=1e-4")
        dotted, raw = item.split("=", 1)
        *path, leaf = dotted.strip().split(".")
        nested: dict = {leaf: _parse_value(raw)}
        for part in reversed(path):
            nested = {part: nested}
        _apply(preset, nested, "preset")
    return preset
