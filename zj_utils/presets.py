"""Presets as data: a preset = overrides of the defaults of each stage's `Config` (zj_utils/config.py).

Switching from the embedded tiny default to a real model on a GPU is one flag: `--preset NAME`.
Any field can also be overridden from the command line: `--set sft.learning_rate=1e-4`.
"""
from __future__ import annotations

import copy
import dataclasses

from .common import ZJError
from .config import Preset


# The paper's test sets (Figures 4 and 5): CMtMedQA's, shipped in data/, and Huatuo-26M's, as
# `zj data fetch huatuo26m-test` writes it. Judged by an LLM: the rule judge knows only the synthetic world.
REAL_TEST_SETS = ["data/cmtmedqa/CMtMedQA_test.json", "data/raw/huatuo26m-test/test_datasets.jsonl"]

# Each preset is a dict of overrides on the defaults in config.py: data, not branching code.
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
        # Gradient checkpointing in every Trainer stage: without it no stage fits 80 GB (`zj estimate`: pretrain
        # 130 GiB, sft 98, rm 943); with it 20, 19 and 27 GiB.
        "pretrain": {"learning_rate": 5e-5, "epochs": 3, "batch_size": 4, "grad_accum": 4, "block_size": 2048,
                     "gradient_checkpointing": True, "lora": {"r": 16, "alpha": 32, "modules_to_save": []}},
        "sft": {"learning_rate": 2e-4, "epochs": 2.0, "batch_size": 4, "grad_accum": 4, "max_length": 2048,
                "gradient_checkpointing": True,
                "lora": {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}},
        # The paper's 16 pairs per optimizer step as 4 micro-batches of 4: 16 pairs at once peaked at 90.8 GiB on an
        # H200 even with checkpointing (82 GiB predicted; docs/SCALING.md); 4 pairs are predicted at 27 GiB.
        "rm": {"temperature": 0.3, "top_p": 0.9, "max_new_tokens": 512, "learning_rate": 7e-4, "epochs": 10.0,
               "batch_size": 4, "grad_accum": 4, "gradient_checkpointing": True, "dev_fraction": 0.1,
               "max_length": 2048, "lora": {"r": 32, "alpha": 64, "modules_to_save": ["score"]}},
        "ppo": {"steps": 8500, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 512,
                "learning_rate": 1e-5},
        "eval": {"max_new_tokens": 512, "batch_size": 8, "repetition_penalty": 1.2,
                 "test_sets": REAL_TEST_SETS, "judge": "openai", "judge_model": "gpt-4o"},
    },
}


_KINDS = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}


def _check_type(value, annotation: str, where: str, current) -> None:
    """The value of a setting against its field's annotation (config.py writes them as strings: 'int', 'float',
    'str | list', ...), so that `--set sft.epochs=abc` stops here, before any stage starts, and not inside a trainer
    after the stage's folder was touched. An int is accepted for a float; a bool is never a number."""
    import json

    kinds = [k.strip() for k in annotation.split("|")]
    if "None" in kinds and value is None:
        return
    known = all(k in _KINDS or k == "None" for k in kinds)
    ok = any(isinstance(value, _KINDS[k]) and not (isinstance(value, bool) and k in ("int", "float"))
             for k in kinds if k in _KINDS)
    if known and not ok:
        raise ZJError(f"Bad value for '{where}': {json.dumps(value, ensure_ascii=False)} ({type(value).__name__}); "
                      f"the setting takes {' or '.join(kinds)}, e.g. --set "
                      f"'{where}={json.dumps(current, ensure_ascii=False)}' (its value now).")


def _apply(obj, overrides: dict, where: str):
    types = {f.name: f.type for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key == "description" and where == "preset":
            obj.description = value
            continue
        if not hasattr(obj, key):
            raise ZJError(f"Unknown setting '{where}.{key}'. Known: {', '.join(f.name for f in dataclasses.fields(obj))}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                name = f"{where}.{key}".removeprefix("preset.")
                raise ZJError(f"Bad value for '{name}': it is a group of settings; set its fields one by one, e.g. "
                              f"--set {name}.{dataclasses.fields(current)[0].name}=...")
            _apply(current, value, f"{where}.{key}")
        else:
            if isinstance(types.get(key), str):
                _check_type(value, types[key], f"{where}.{key}".removeprefix("preset."), current)
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
