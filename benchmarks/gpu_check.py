"""GPU check: measured peak memory and speed of one step of each training stage, beside `zj estimate`.

For each LLaMA shape (7B: LLaMA-7B; 13B: Ziya-LLaMA-13B, the `zhongjing-13b` preset's base, vocabulary 39424)
a checkpoint with random weights is written locally (no hub), then loaded the way the pipeline loads models
(`common.load_model`: nf4 + double quantisation; `training.prepare_qlora`: LoRA), and one stage at a time runs at
the preset's settings:

  pretrain  a causal-LM step on batch_size x block_size tokens, bf16 autocast (as the Trainer with bf16=True),
            AdamW on the LoRA weights (fp32, as peft keeps them)
  rm        a reward-model step: chosen and rejected sequences of batch_size pairs x max_length in one forward,
            -log sigmoid(r_chosen - r_rejected), trainable weights in bf16 (what TRL + restore_adapter_dtype do)
  ppo       one `ppo.ppo_step` (rollout, reward-model scoring, old/reference log-probs, the PPO epochs over
            minibatches) with the pipeline's pieces: an nf4 policy + LoRA + `ValueHead`, the reference = the
            policy with its adapter disabled, a second nf4 model of the same shape as the reward model (frozen,
            not prepared, as `common.load_for_inference` loads it), no autocast (as `train_ppo`)

Measured: torch's peak allocated memory (`torch.cuda.max_memory_allocated`, reset after loading, so it counts
weights + optimizer + the step), the peak reserved by its caching allocator, seconds and tokens/s of the step,
and the memory outside torch's counters (CUDA context, cuBLAS workspace) from `cuda.mem_get_info`. Predicted:
`zj_utils.estimate.estimate` for the same preset, shape, settings and gradient checkpointing, less its 0.75 GiB
CUDA-context term (which torch's counter does not see). For PPO the peak of each phase is recorded too.

Settings actually run (all from the preset, `--set` to change them):
  - PPO generates `--ppo-new-tokens` (default 32) tokens instead of the preset's 512, to fit the time budget; the
    prompts fill the rest of model.max_length (2048), so the sequences are as long as the preset's, and the
    prediction is computed for exactly these settings (the preset's own is in the JSON too).
  - Gradient checkpointing, `--gc auto` (default): off where the estimate without it fits in 90% of the card,
    on where it does not (13B pre-training, both reward models). PPO runs its policy in eval mode, where HF's
    checkpointing does nothing, so PPO always runs without it (as the pipeline does).
  - pretrain and rm take `--steps` (default 2) optimizer steps: the peak is over all of them (AdamW allocates its
    states in the first), the speed is the last step's (the first pays for kernel selection and warm-up).

Run from the repository root (expected ~5 minutes on one H200; no stage starts after `--budget-s`, 360 s):

    python benchmarks/gpu_check.py --out DIR                      # 13b then 7b, pretrain, rm, ppo
    python benchmarks/gpu_check.py --shapes 7b --stages ppo --set ppo.batch_size=4
    python benchmarks/gpu_check.py --toy --out /tmp/toy           # toy shapes, on CPU too (the test runs this)

It writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: $OUT if set, else runs/gpu_check) after every
row, so a run cut short keeps what it measured. Imports only torch, transformers, peft, bitsandbytes, accelerate,
safetensors and numpy (no trl, no datasets): the GPU machine's environment is not the project's.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# every model is local: a hub lookup could only time out on a machine without internet
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from zj_utils.config import LoraSpec  # noqa: E402
from zj_utils.estimate import CUDA_CONTEXT_BYTES, GIB, KNOWN_SHAPES, ModelShape, estimate  # noqa: E402
from zj_utils.presets import get_preset  # noqa: E402

SHAPES = {
    "7b": ModelShape("llama-7b", 32000, 4096, 11008, 32, 32, 32),
    # the zhongjing-13b preset's base: LLaMA-13B with ~7k Chinese tokens added to the vocabulary
    "13b": dataclasses.replace(KNOWN_SHAPES["IDEA-CCNL/Ziya-LLaMA-13B-v1"], name="ziya-llama-13b"),
    "toy": ModelShape("toy", 256, 64, 128, 2, 2, 2),
}
STAGES = ("pretrain", "rm", "ppo")
# Toy settings: seconds on two CPU cores, every code path of the real run.
TOY_SETTINGS = ["pretrain.batch_size=2", "pretrain.block_size=32", "rm.batch_size=2", "rm.max_length=32",
                "ppo.batch_size=4", "ppo.mini_batch_size=2", "model.max_length=32"]
# On a CPU the pipeline computes in fp32 (bf16 matmuls there are slow and the presets for CPUs say float32).
CPU_SETTINGS = ["model.dtype=float32", "quant.compute_dtype=float32"]
PAD, BOS, EOS = 0, 1, 2
FIRST_ID = 3  # random token ids start above the special ones, so a reward model's padding search finds none


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- memory

class Meter:
    """Peak memory: torch's CUDA allocator counters on a GPU; on a CPU the process's resident high-water mark
    (VmHWM, reset through /proc/self/clear_refs), which counts everything the process holds and is only a
    smoke signal, not comparable with the estimate."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @staticmethod
    def _proc(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # then the CPU peak is the process's lifetime peak: still a positive smoke number

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else self._proc("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._proc("VmHWM")

    def peak_reserved(self) -> int | None:
        return torch.cuda.max_memory_reserved() if self.cuda else None

    def outside_torch(self) -> int | None:
        """Device memory in use that torch's allocator does not hold: the CUDA context, cuBLAS workspaces."""
        if not self.cuda:
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free - torch.cuda.memory_reserved()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- models

def make_checkpoint(shape: ModelShape, path: Path, device: torch.device) -> float:
    """A random LLaMA of `shape` saved as a bf16 safetensors checkpoint; returns seconds. Built on the GPU when
    there is one: initialising 13B parameters there takes seconds, on CPU minutes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    cfg = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                      intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                      num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=shape.tie_embeddings,
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # half the memory and disk of the throw-away checkpoint
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(str(path))
    del model
    free_memory()
    return time.perf_counter() - t0


def checkpoint_dir(shape: ModelShape, tmp: str | None) -> Path:
    """/dev/shm when it has room (RAM: the loads that follow read it at memory speed), else the temp folder."""
    need = 2 * (shape.params() + shape.hidden_size) * 1.1
    candidates = [tmp] if tmp else ["/dev/shm", tempfile.gettempdir()]
    for base in candidates:
        try:
            if Path(base).is_dir() and shutil.disk_usage(base).free > need:
                return Path(tempfile.mkdtemp(prefix=f"zj-gpu-check-{shape.name}-", dir=base))
        except OSError:
            continue
    raise RuntimeError(f"no room for a {need / GIB:.0f} GiB checkpoint of {shape.name} in {', '.join(candidates)}; "
                       "give a folder with --tmp")


class IdTokenizer:
    """What `ppo.ppo_step` needs of a tokenizer, over token ids written as numbers. The check measures memory and
    speed, for which the text does not matter, and a real tokenizer of these vocabularies would come from the
    hub (not reachable on the GPU machine)."""

    pad_token_id, eos_token_id = PAD, EOS

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return " ".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}

    def batch_decode(self, seqs, skip_special_tokens=True):
        # PPO decodes each response to build the reward model's input (reward.reward_text) from its text
        return [" ".join(str(t) for t in s if not (skip_special_tokens and t in (PAD, EOS))) for s in seqs]


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def lora_b_nonzero(model) -> bool:
    """LoRA's B starts at zero: nonzero after a step means the update reached the adapter."""
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(bs) and all(bool(p.detach().abs().sum() > 0) for p in bs)


def autocast(ctx):
    # the Trainer's bf16=True (training.training_args: on a GPU when the model dtype is bfloat16)
    on = ctx.device.type == "cuda" and ctx.preset.model.dtype == "bfloat16"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on) if on else torch.autocast("cpu", enabled=False)


# --------------------------------------------------------------------------- stages

@dataclasses.dataclass
class Ctx:
    preset: object
    shape: ModelShape
    ckpt: str
    device: torch.device
    meter: Meter
    gradient_checkpointing: bool
    steps: int
    seed: int = 0
    lr: float = 0.0  # set by the stage from its config


def _train_steps(ctx, model, batch_fn, loss_fn) -> dict:
    """`ctx.steps` optimizer steps; the peak is measured from here (weights loaded), over all steps."""
    if ctx.gradient_checkpointing:
        # what TrainingArguments(gradient_checkpointing=True) does: non-reentrant checkpoints per decoder layer
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loaded = ctx.meter.allocated()
    ctx.meter.reset()
    opt = torch.optim.AdamW(trainable(model), lr=ctx.lr)
    g = torch.Generator().manual_seed(ctx.seed)
    times, losses = [], []
    for _ in range(ctx.steps):
        batch = {k: v.to(ctx.device) for k, v in batch_fn(g).items()}
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(ctx):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        del loss
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"loaded": loaded, "peak": ctx.meter.peak(), "peak_reserved": ctx.meter.peak_reserved(),
            "step_seconds": times, "loss": losses[-1], "losses": losses, "updated": lora_b_nonzero(model)}


def run_pretrain(ctx: Ctx) -> dict:
    from zj_utils.common import load_model
    from zj_utils.training import prepare_qlora

    cfg = ctx.preset.pretrain
    model = prepare_qlora(load_model(ctx.ckpt, ctx.preset.model, ctx.preset.quant), cfg.lora)
    ctx.lr = cfg.learning_rate
    V = ctx.shape.vocab_size

    def batch(g):
        ids = torch.randint(FIRST_ID, V, (cfg.batch_size, cfg.block_size), generator=g)
        return {"input_ids": ids}

    def loss(model, b):
        # labels = inputs, as pre-training's packed blocks; the model shifts them and computes the loss in fp32
        return model(input_ids=b["input_ids"], labels=b["input_ids"]).loss

    out = _train_steps(ctx, model, batch, loss)
    out["tokens"] = cfg.batch_size * cfg.block_size
    out["settings"] = (f"{cfg.batch_size} x {cfg.block_size} tokens, LoRA r={cfg.lora.r} {_targets(cfg.lora)}, "
                       f"dropout {cfg.lora.dropout}, lr {cfg.learning_rate}")
    del model
    return out


def run_rm(ctx: Ctx) -> dict:
    from zj_utils.common import load_model
    from zj_utils.training import prepare_qlora, restore_adapter_dtype

    cfg = ctx.preset.rm
    rm = load_model(ctx.ckpt, ctx.preset.model, ctx.preset.quant, kind="seqcls")
    rm.config.pad_token_id = PAD
    rm = prepare_qlora(rm, cfg.lora, task_type="SEQ_CLS", quantized=ctx.preset.quant.load_in_4bit)
    # TRL's RewardTrainer casts the trainable weights to bf16 and reward.run_rm puts them in the compute dtype
    restore_adapter_dtype(rm, ctx.preset)
    ctx.lr = cfg.learning_rate
    V, B, L = ctx.shape.vocab_size, cfg.batch_size, cfg.max_length

    def batch(g):
        # chosen (first B rows) and rejected (last B) go through in one forward, as TRL's RewardTrainer does;
        # every row is max_length long: the worst case the stage allows
        ids = torch.randint(FIRST_ID, V, (2 * B, L), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def loss(model, b):
        r = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.squeeze(-1).float()
        return -torch.nn.functional.logsigmoid(r[:B] - r[B:]).mean()

    out = _train_steps(ctx, rm, batch, loss)
    score = [p for n, p in rm.named_parameters() if "score" in n and p.requires_grad]
    out["updated"] = out["updated"] and bool(score)
    out["tokens"] = 2 * B * L
    out["settings"] = (f"{B} pairs x {L} tokens (chosen + rejected in one forward), LoRA r={cfg.lora.r} "
                       f"{_targets(cfg.lora)} + trainable {', '.join(cfg.lora.modules_to_save) or 'nothing else'}, "
                       f"lr {cfg.learning_rate}")
    del rm, score
    return out


def run_ppo(ctx: Ctx) -> dict:
    from zj_utils import ppo, ppo_maths
    from zj_utils.common import load_for_inference, load_model
    from zj_utils.training import prepare_qlora

    cfg = ctx.preset.ppo
    S = ctx.preset.model.max_length
    R = cfg.max_new_tokens
    P = S - R
    if P < 1:
        raise ValueError(f"model.max_length={S} leaves no room for a prompt before {R} new tokens")
    # the reward model as load_reward_model loads it: nf4 on a GPU, not prepared (its other parts stay in the
    # model dtype), frozen
    reward_model = load_for_inference(ctx.ckpt, ctx.preset, kind="seqcls")
    reward_model.eval().requires_grad_(False)
    reward_model.config.pad_token_id = PAD
    lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules)
    policy = prepare_qlora(load_model(ctx.ckpt, ctx.preset.model, ctx.preset.quant), lora,
                           quantized=ctx.preset.quant.load_in_4bit)
    # as train_ppo: eval mode throughout (no dropout, so old and new log-probs agree), value head on the trunk
    policy.eval()
    value_head = ppo_maths.ValueHead(policy.get_base_model().config.hidden_size).to(ctx.device)
    optimizer = torch.optim.AdamW(trainable(policy) + list(value_head.parameters()), lr=cfg.learning_rate)
    kl_ctl = ppo_maths.KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.target_kl, cfg.horizon)
    gen = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    ids = torch.randint(FIRST_ID, ctx.shape.vocab_size, (cfg.batch_size, P), generator=gen)
    prompts = [[{"role": "user", "content": " ".join(map(str, row.tolist()))}] for row in ids]

    loaded = ctx.meter.allocated()
    ctx.meter.reset()
    phases = _PhaseMeter(ctx.meter)
    originals = {name: getattr(ppo, name) for name in ("generate_rollouts", "score_responses", "compute_logprobs")}

    # ppo_step calls these through the module (compute_logprobs too: ppo imports it from ppo_maths by name, so
    # ppo_step looks it up in ppo's namespace), so wrapping them there marks where each phase begins
    def generate_rollouts(*a, **k):
        phases.enter("generation")
        return originals["generate_rollouts"](*a, **k)

    def score_responses(*a, **k):
        phases.enter("reward model")
        return originals["score_responses"](*a, **k)

    def compute_logprobs(*a, **k):
        phases.enter("update minibatches" if torch.is_grad_enabled() else "log-probs (no grad)")
        return originals["compute_logprobs"](*a, **k)

    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ppo.generate_rollouts, ppo.score_responses, ppo.compute_logprobs = (generate_rollouts, score_responses,
                                                                       compute_logprobs)
    try:
        stats = ppo.ppo_step(policy, value_head, optimizer, IdTokenizer(), reward_model, prompts, cfg, kl_ctl, gen)
    finally:
        for name, fn in originals.items():
            setattr(ppo, name, fn)
    phases.enter(None)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    moved = bool(value_head.summary.weight.detach().abs().sum() > 0)
    n_updates = math.ceil(cfg.batch_size / cfg.mini_batch_size) * cfg.ppo_epochs
    tokens = cfg.batch_size * (P + round(stats["response_length"]))
    out = {"loaded": loaded, "peak": max(phases.peaks.values()), "peak_reserved": ctx.meter.peak_reserved(),
           "step_seconds": [secs], "tokens": tokens,
           "loss": stats["policy_loss"] + cfg.vf_coef * stats["value_loss"],
           "updated": lora_b_nonzero(policy) and moved, "value_head_moved": moved,
           "phase_peaks": phases.peaks, "phase_seconds": phases.seconds,
           "generation_tokens_per_s": stats["tokens_per_s"],
           "ppo_stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))},
           "settings": (f"{cfg.batch_size} rollouts of {P} prompt + {R} new tokens, {n_updates} minibatch update(s) "
                        f"of {cfg.mini_batch_size}, LoRA r={cfg.lora_r} {_targets(lora)}, value head, "
                        f"reward model: a second random model of the same shape")}
    del policy, value_head, optimizer, reward_model
    return out


class _PhaseMeter:
    def __init__(self, meter: Meter):
        self.meter, self.current, self.t0 = meter, None, time.perf_counter()
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def enter(self, name: str | None) -> None:
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), self.meter.peak())
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - self.t0
        if name is not None:
            self.meter.reset()
        self.current, self.t0 = name, time.perf_counter()


RUNNERS = {"pretrain": run_pretrain, "rm": run_rm, "ppo": run_ppo}
# estimate's PPO phase -> the phase of ppo_step measured for it (run_ppo's names)
PPO_PHASES = {"generation KV cache": "generation", "log-prob pass over the batch (no grad)": "log-probs (no grad)",
              "PPO minibatch (activations + loss head)": "update minibatches"}


def _targets(spec) -> str:
    t = spec.target_modules
    return t if isinstance(t, str) else ",".join(t)


# --------------------------------------------------------------------------- predictions and rows

def predicted_weights(est) -> float:
    keep = ("weights", "modules_to_save", "reward model", "value head")
    return sum(v for n, v, _ in est.parts if any(k in n for k in keep) and "workspace" not in n)


def choose_gc(mode: str, preset, stage: str, shape: ModelShape, device: torch.device) -> list[bool]:
    if stage == "ppo":
        return [False]  # the policy runs in eval mode, where HF's checkpointing is inactive
    if mode == "on":
        return [True]
    if mode == "off":
        return [False]
    if mode == "both":
        return [False, True]
    if device.type != "cuda":
        return [False]
    card = torch.cuda.get_device_properties(device).total_memory
    need = estimate(preset, stage, "gpu", False, shape).total
    return [need > 0.9 * card]


def halved(preset, stage: str):
    """The preset with the stage's micro-batch halved (PPO: the update minibatch, whose activations are its
    peak), and what changed; None when it is already 1."""
    section, field = {"pretrain": ("pretrain", "batch_size"), "rm": ("rm", "batch_size"),
                      "ppo": ("ppo", "mini_batch_size")}[stage]
    cfg = getattr(preset, section)
    n = getattr(cfg, field)
    if n <= 1:
        return None
    smaller = copy.deepcopy(preset)
    setattr(getattr(smaller, section), field, n // 2)
    return smaller, f"{section}.{field}={n // 2}"


def device_info(device: torch.device) -> dict:
    import peft
    import transformers

    info = {"device": "cpu", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "cuda": torch.version.cuda}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:  # reported, not fatal: the stages then fail one by one with the real error
        info["bitsandbytes"] = f"not importable: {type(e).__name__}: {e}"
    try:
        import accelerate

        info["accelerate"] = accelerate.__version__
    except ImportError:
        info["accelerate"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / GIB, 2),
                    capability=f"{props.major}.{props.minor}", device_count=torch.cuda.device_count())
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def _gib(x) -> float | None:
    return None if x is None else round(x / GIB, 3)


def format_row(r: dict) -> str:
    def f(x, spec):
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return format(x, spec)
        return "-".rjust(int(spec.rstrip("df").split(".")[0]))  # keep the column's width
    if r.get("error"):
        return f"{r['shape']:<15} {r['stage']:<8} {'on' if r['gc'] else 'off':>3}  ERROR: {r['error']}"
    return (f"{r['shape']:<15} {r['stage']:<8} {'on' if r['gc'] else 'off':>3} {f(r['tokens'], '9d')} "
            f"{f(r['measured_gib'], '9.2f')} {f(r['predicted_gib'], '9.2f')} {f(r['ratio'], '6.3f')} "
            f"{f(r['reserved_gib'], '9.2f')} {f(r['weights_measured_gib'], '7.2f')} "
            f"{f(r['weights_predicted_gib'], '7.2f')} "
            f"{f(r['tokens_per_s'], '9.0f')} {f(r['step_seconds'], '7.2f')} {f(r['load_seconds'], '6.1f')}")


HEADER = (f"{'shape':<15} {'stage':<8} {'gc':>3} {'tokens':>9} {'peak GiB':>9} {'pred GiB':>9} {'ratio':>6} "
          f"{'reserved':>9} {'w meas':>7} {'w pred':>7} {'tok/s':>9} {'step s':>7} {'load s':>6}")


def markdown(report: dict) -> str:
    d = report["device"]
    lines = [
        "# GPU check: measured vs `zj estimate`", "",
        f"Device: {d.get('device')} ({d.get('memory_gib', '-')} GiB), torch {d['torch']} (CUDA {d['cuda']}), "
        f"transformers {d['transformers']}, peft {d['peft']}, bitsandbytes {d['bitsandbytes']}, "
        f"accelerate {d.get('accelerate')}, Python {d['python']}.", "",
        f"Command: `{report['command']}`; preset `{report['preset']}`, "
        f"settings {report['settings'] or 'as the preset'}; "
        f"total {report['seconds']:.0f} s.", "",
        "Peak = torch's peak allocated memory during the steps (weights + optimizer + activations), GiB; predicted = "
        "`zj estimate` for the same settings less its 0.75 GiB CUDA-context term; ratio = peak / predicted; "
        "reserved = the caching allocator's peak; weights = allocated after loading and LoRA vs the estimate's "
        "weight parts; tokens/s of the (last) step.", "",
        "| shape | stage | grad. ckpt | tokens/step | peak GiB | predicted GiB | ratio | reserved GiB "
        "| weights meas./pred. | tokens/s | step s | load s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    v = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"
    for r in report["rows"]:
        gc_on = "on" if r["gc"] else "off"
        if r.get("error"):
            err = r["error"][:160].replace("|", "/")
            lines.append(f"| {r['shape']} | {r['stage']} | {gc_on} | | {err} | {v(r.get('predicted_gib'), '.2f')} "
                         "| | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['stage']} | {gc_on} | {r['tokens']} | {v(r['measured_gib'], '.2f')} | "
                     f"{v(r['predicted_gib'], '.2f')} | {v(r['ratio'], '.3f')} | {v(r['reserved_gib'], '.2f')} | "
                     f"{v(r['weights_measured_gib'], '.2f')} / {v(r['weights_predicted_gib'], '.2f')} | "
                     f"{v(r['tokens_per_s'], '.0f')} | {v(r['step_seconds'], '.2f')} | {v(r['load_seconds'], '.1f')} |")
    lines.append("")
    for r in report["rows"]:
        if r.get("settings"):
            retry = f" (after an out-of-memory error at the preset's batch: {r['retry_of_oom']})" \
                if r.get("retry_of_oom") else ""
            lines.append(f"- {r['shape']} {r['stage']}{retry}: {r['settings']}.")
        if r.get("phase_peaks_gib"):
            ph = ", ".join(f"{k} {v:.2f}" for k, v in r["phase_peaks_gib"].items())
            pr = ", ".join(f"{k} {v:.2f}" for k, v in r["predicted_phases_gib"].items())
            lines.append(f"  PPO peak by phase, GiB: measured {ph}; predicted {pr}; generation "
                         f"{r['generation_tokens_per_s']:.0f} tokens/s.")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("gpu_check.md", markdown(report))):
        tmp = out / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def measure_one(preset, shape, stage, gc_on, ckpt, device, meter, steps, seed) -> dict:
    est = estimate(preset, stage, "gpu" if device.type == "cuda" else "cpu", gc_on, shape)
    pred = est.total - (CUDA_CONTEXT_BYTES if device.type == "cuda" else 0)
    row = {"shape": shape.name, "stage": stage, "gc": gc_on, "error": None, "predicted_bytes": round(pred),
           "predicted_gib": _gib(pred), "predicted_total_with_context_gib": _gib(est.total),
           "weights_predicted_gib": _gib(predicted_weights(est)),
           "predicted_parts_gib": {n: _gib(v) for n, v, _ in est.parts}}
    if stage == "ppo":
        # the estimate counts only the largest PPO phase; each phase's total = everything else + that phase
        phases = {}
        for n, _, note in est.parts:
            # the phases not at the peak are listed as "(NAME: not at peak)"
            name = n[1:-len(": not at peak)")] if n.endswith(": not at peak)") else n
            if name in PPO_PHASES:
                phases[PPO_PHASES[name]] = float(note.split()[0]) * GIB
        rest = pred - max(phases.values())
        row["predicted_phases_gib"] = {k: _gib(rest + v) for k, v in phases.items()}
    free_memory()
    base = meter.allocated() if device.type == "cuda" else 0
    ctx = Ctx(preset, shape, str(ckpt), device, meter, gc_on, steps, seed)
    meter.reset()
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        m = RUNNERS[stage](ctx)
    except Exception as e:  # one OOM or API mismatch must not end the run: the next stage may still work
        tb = traceback.format_exc()
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        row["oom"] = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        row["traceback"] = tb[-4000:]
        if meter.cuda:
            row["peak_at_error_gib"] = _gib(torch.cuda.max_memory_allocated() - base)
        log(tb)
        return row
    finally:
        ctx = None
    total = time.perf_counter() - t0
    step_s = m["step_seconds"][-1]
    measured = m["peak"] - base
    row.update(
        measured_bytes=measured, measured_gib=_gib(measured), reserved_gib=_gib(m["peak_reserved"]),
        ratio=round(measured / pred, 3) if device.type == "cuda" and pred > 0 else None,
        weights_measured_gib=_gib(m["loaded"] - base) if device.type == "cuda" else None,
        tokens=m["tokens"], tokens_per_s=round(m["tokens"] / step_s, 1), step_seconds=round(step_s, 3),
        all_step_seconds=[round(s, 3) for s in m["step_seconds"]],
        load_seconds=round(total - sum(m["step_seconds"]), 1), loss=m["loss"], updated=m["updated"],
        outside_torch_gib=_gib(meter.outside_torch()), settings=m["settings"])
    if device.type != "cuda":
        row["measured_is"] = "process peak RSS (CPU): not comparable with the estimate"
    for k in ("losses", "value_head_moved", "generation_tokens_per_s", "ppo_stats", "phase_seconds"):
        if k in m:
            row[k] = m[k]
    if "phase_peaks" in m:
        row["phase_peaks_gib"] = {k: _gib(v - base) for k, v in m["phase_peaks"].items()}
    return row


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="zhongjing-13b", help="stage settings from this preset (default: %(default)s)")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated, of " + ", ".join(SHAPES) + " (default: 13b,7b; toy with --toy)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of " + ", ".join(STAGES))
    ap.add_argument("--toy", action="store_true",
                    help="toy shapes and batches (hidden 64, 2 layers, vocab 256, 32 tokens): any device, seconds")
    ap.add_argument("--gc", choices=("auto", "on", "off", "both"), default="auto",
                    help="gradient checkpointing for pretrain and rm (auto: only where the estimate says the card "
                         "needs it)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps of pretrain and rm (default: %(default)s)")
    ap.add_argument("--ppo-new-tokens", type=int, default=None,
                    help="tokens PPO generates (default: 32, 8 with --toy; the preset says 512)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a preset setting, e.g. --set rm.batch_size=8 (repeatable)")
    ap.add_argument("--out", default=None,
                    help="folder for gpu_check.json and .md (default: $OUT, else runs/gpu_check)")
    ap.add_argument("--tmp", default=None, help="folder for the random checkpoints (default: /dev/shm if it has room)")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="start no stage after this many seconds (default: %(default)s)")
    ap.add_argument("--no-oom-retry", dest="oom_retry", action="store_false",
                    help="after an out-of-memory error, do not retry the stage at half its micro-batch")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is there")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.shapes = [s.strip() for s in (args.shapes or ("toy" if args.toy else "13b,7b")).split(",") if s.strip()]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in args.shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}: choose from {', '.join(SHAPES)}")
    for s in args.stages:
        if s not in STAGES:
            ap.error(f"unknown stage {s!r}: choose from {', '.join(STAGES)}")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    return args


def run(argv=None) -> dict:
    """Measure every (shape, stage); returns the report (also written to --out)."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    big = [s for s in args.shapes if s != "toy"]
    if device.type != "cuda" and big:
        raise SystemExit(f"shapes {', '.join(big)} need a GPU (nf4 {'/'.join(big)} on a CPU would take hours); "
                         "use --toy here")
    import transformers

    transformers.logging.set_verbosity_error()  # the reward model's new score head is meant to be random
    transformers.logging.disable_progress_bar()  # one bar per load would bury the table in the log
    new_tokens = args.ppo_new_tokens if args.ppo_new_tokens is not None else (8 if args.toy else 32)
    settings = (TOY_SETTINGS if args.toy else []) + (CPU_SETTINGS if device.type != "cuda" else []) \
        + [f"ppo.max_new_tokens={new_tokens}"] + list(args.overrides)
    preset = get_preset(args.preset, settings)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_check")
    meter = Meter(device)
    t_start = time.perf_counter()
    report = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "preset": args.preset, "settings": settings, "device": device_info(device),
              "preset_predictions_gib": {}, "rows": [], "seconds": 0.0}
    log(f"gpu check: {report['device']}")
    log(f"preset {args.preset}, settings {settings}; results in {out}")
    if device.type != "cuda":
        log("on a CPU 'peak' is the process's peak RSS, a smoke signal only: the comparison with the estimate is "
            "for GPUs (bench_memory.py does it on CPU)")
    log(HEADER)
    for key in args.shapes:
        shape = SHAPES[key]
        if time.perf_counter() - t_start > args.budget_s:
            log(f"{shape.name}: skipped (past --budget-s {args.budget_s:.0f} s)")
            report["rows"].append({"shape": shape.name, "stage": ",".join(args.stages), "gc": False,
                                   "skipped": True, "error": f"skipped: past --budget-s {args.budget_s:.0f} s"})
            continue
        # the preset's own settings (PPO at its max_new_tokens): what `zj estimate` says for the real run
        own = get_preset(args.preset, [s for s in settings if not s.startswith("ppo.max_new_tokens=")])
        report["preset_predictions_gib"][shape.name] = {
            f"{st}{' gc' if g else ''}": _gib(estimate(own, st, "gpu", g, shape).total)
            for st in args.stages for g in (False, True)}
        ckpt = None
        try:
            ckpt = checkpoint_dir(shape, args.tmp)
            log(f"{shape.name}: writing a random {shape.params() / 1e9:.2f}B-parameter bf16 checkpoint to {ckpt}")
            secs = make_checkpoint(shape, ckpt, device)
            log(f"{shape.name}: checkpoint written in {secs:.1f} s")
            for stage in args.stages:
                for gc_on in choose_gc(args.gc, preset, stage, shape, device):
                    if time.perf_counter() - t_start > args.budget_s:
                        row = {"shape": shape.name, "stage": stage, "gc": gc_on, "skipped": True,
                               "error": f"skipped: past --budget-s {args.budget_s:.0f} s"}
                    else:
                        log(f"{shape.name} {stage} (gradient checkpointing {'on' if gc_on else 'off'}) ...")
                        row = measure_one(preset, shape, stage, gc_on, ckpt, device, meter, args.steps, args.seed)
                    rows = [row]
                    smaller = halved(preset, stage) if row.get("oom") and args.oom_retry else None
                    if smaller is not None and time.perf_counter() - t_start <= args.budget_s:
                        # the preset's batch does not fit: one more point for the memory model at half of it
                        report["rows"].append(row)
                        log(format_row(row))
                        free_memory()
                        sub_preset, what = smaller
                        log(f"{shape.name} {stage}: out of memory; again with {what} ...")
                        rows = [measure_one(sub_preset, shape, stage, gc_on, ckpt, device, meter, args.steps,
                                            args.seed)]
                        rows[0]["retry_of_oom"] = what
                    for row in rows:
                        report["rows"].append(row)
                        log(format_row(row))
                    report["seconds"] = time.perf_counter() - t_start
                    write_report(out, report)
                    free_memory()
        except Exception as e:  # a shape whose checkpoint cannot be made: report it, go on with the next
            log(traceback.format_exc())
            report["rows"].append({"shape": shape.name, "stage": "checkpoint", "gc": False,
                                   "error": f"{type(e).__name__}: {e}"[:400]})
        finally:
            if ckpt is not None:
                shutil.rmtree(ckpt, ignore_errors=True)
            free_memory()
    report["seconds"] = time.perf_counter() - t_start
    write_report(out, report)
    log("")
    log(HEADER)
    for r in report["rows"]:
        log(format_row(r))
    log(f"total {report['seconds']:.0f} s; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


def main(argv=None) -> int:
    report = run(argv)
    # an out-of-memory error is a measurement (that batch does not fit), a skipped stage is the budget's choice;
    # anything else is the script failing on this machine
    failed = [r for r in report["rows"] if r.get("error") and not r.get("oom") and not r.get("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
