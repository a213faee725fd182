"""`zj estimate`: predicted peak memory of a stage, by part, before anyone buys a GPU.

The model is counted, not fitted: every term below is a tensor the QLoRA recipe of this project keeps alive
(`common.load_model` -> nf4 with double quantisation, `training.prepare_qlora` -> peft's
`prepare_model_for_kbit_training` + LoRA, a Trainer step with AdamW). The per-token activation terms were
read off autograd's saved tensors (the list is in docs/SCALING.md) and checked against measured peak RSS on
CPU by `benchmarks/bench_memory.py`; GPU figures use the same counts with bf16 where autocast makes tensors
bf16, and are predictions until someone records a GPU run (docs/SCALING.md says what to record).

Units: bytes internally; the table prints GiB (2**30), and "fits in 24/40/80 GB" compares with 24/40/80 GiB
less the CUDA context, i.e. what a 24/40/80 GB card really offers torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .common import ZJError

GIB = 2 ** 30
CARDS_GB = (24, 40, 80)
# A CUDA context, cuBLAS workspace and kernels take memory outside torch's allocator counters.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
# Blocks of the 4-bit format (bitsandbytes defaults, used by common.bnb_config).
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STAGES = ("pretrain", "sft", "rm", "ppo")


@dataclass
class ModelShape:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has q/k/v biases

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer (LLaMA/Qwen2 layout)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def quantized_params(self) -> int:
        return self.num_layers * sum(a * b for a, b in self.linears().values())

    def other_params(self, causal: bool = True) -> int:
        """Everything bitsandbytes leaves unquantised: embeddings, lm_head (skipped by transformers' bnb
        integration), norms and biases."""
        h = self.hidden_size
        emb = self.vocab_size * h
        head = 0 if (self.tie_embeddings or not causal) else self.vocab_size * h
        norms = (2 * self.num_layers + 1) * h
        bias = self.num_layers * (h + 2 * self.kv_dim) if self.attention_bias else 0
        return emb + head + norms + bias

    def params(self) -> int:
        return self.quantized_params() + self.other_params()


# Shapes of the hub models the presets name (there is no hub on this machine): values from each model's
# config.json. A local folder with a config.json is read instead (`shape_from_config`).
KNOWN_SHAPES: dict[str, ModelShape] = {s.name: s for s in [
    ModelShape("Qwen/Qwen2.5-0.5B-Instruct", 151936, 896, 4864, 24, 14, 2, tie_embeddings=True, attention_bias=True),
    ModelShape("Qwen/Qwen2.5-1.5B-Instruct", 151936, 1536, 8960, 28, 12, 2, tie_embeddings=True, attention_bias=True),
    ModelShape("huggyllama/llama-13b", 32000, 5120, 13824, 40, 40, 40),
    # Ziya is LLaMA-13B with a vocabulary extended by ~7k Chinese tokens.
    ModelShape("IDEA-CCNL/Ziya-LLaMA-13B-v1", 39424, 5120, 13824, 40, 40, 40),
]}
KNOWN_SHAPES["Qwen/Qwen2.5-0.5B"] = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]
KNOWN_SHAPES["Qwen/Qwen2.5-1.5B"] = KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]


def shape_from_config(path: str | Path) -> ModelShape:
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ZJError(f"{cfg_path}: cannot read the model's config ({type(e).__name__}: {e})") from e
    cfg = cfg.get("text_config", cfg)
    try:
        return ModelShape(
            name=str(path), vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")))
    except KeyError as e:
        raise ZJError(f"{cfg_path}: field {e} missing; the estimator knows LLaMA/Qwen2-shaped configs") from e


def model_shape(preset) -> ModelShape:
    mc = preset.model
    if mc.name_or_path == "tiny":
        return ModelShape("tiny", mc.vocab_size, mc.hidden_size, mc.intermediate_size, mc.num_layers,
                          mc.num_heads, mc.num_heads)
    if Path(mc.name_or_path).is_dir():
        return shape_from_config(mc.name_or_path)
    if mc.name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[mc.name_or_path]
    raise ZJError(f"model.name_or_path={mc.name_or_path!r}: unknown shape. Give a local folder with a config.json, "
                  f"or one of: {', '.join(sorted(KNOWN_SHAPES))}")


# --------------------------------------------------------------------------- the pieces

def nf4_bytes(n_params: int, double_quant: bool = True) -> float:
    """4 bits per weight + one absmax per 64-block: fp32 (4 bytes), or with double quantisation an 8-bit code
    (1 byte) plus one fp32 absmax per 256 of those."""
    blocks = n_params / NF4_BLOCK
    absmax = blocks * 1 + blocks / NF4_DQ_BLOCK * 4 if double_quant else blocks * 4
    return n_params / 2 + absmax


def lora_targets(shape: ModelShape, target_modules) -> list[str]:
    """peft's "all-linear" = every linear of the decoder layers (never lm_head)."""
    if target_modules == "all-linear":
        return list(LINEARS)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unknown = [n for n in names if n not in LINEARS]
    if unknown:
        raise ZJError(f"lora target_modules {unknown}: the estimator knows {', '.join(LINEARS)} or 'all-linear'")
    return names


def lora_params(shape: ModelShape, targets: list[str], r: int) -> int:
    lin = shape.linears()
    return shape.num_layers * sum(r * (lin[t][0] + lin[t][1]) for t in targets)


def modules_to_save_params(shape: ModelShape, names, causal: bool = True) -> int:
    sizes = {"embed_tokens": shape.vocab_size * shape.hidden_size,
             "lm_head": shape.vocab_size * shape.hidden_size, "score": shape.hidden_size}
    unknown = [n for n in names if n not in sizes]
    if unknown:
        raise ZJError(f"lora modules_to_save {unknown}: the estimator knows {', '.join(sizes)}")
    return sum(sizes[n] for n in names)


@dataclass
class Bytes:
    """Bytes per element of the three kinds of activation the recipe keeps."""
    stream: int   # residual stream, norms, MLP elementwise: fp32 in QLoRA (see module docs)
    matmul: int   # inputs saved by LoRA matmuls and attention: the compute dtype under autocast
    mask: int     # a dropout mask: bool on CUDA (native_dropout), a float tensor on CPU


def act_bytes(compute_dtype: str, device: str) -> Bytes:
    mm = 2 if compute_dtype in ("bfloat16", "float16") else 4
    # prepare_model_for_kbit_training casts embeddings and norms to fp32 and bnb's Linear4bit returns its
    # input's dtype, so the residual stream stays fp32 even with bf16 compute.
    return Bytes(stream=4, matmul=mm, mask=1 if device == "gpu" else mm)


def layer_activation_bytes(shape: ModelShape, targets: list[str], r: int, dropout: float, b: Bytes) -> float:
    """Bytes autograd saves per token in one decoder layer of a QLoRA model (frozen nf4 base: bitsandbytes'
    MatMul4Bit saves only its weight, so a linear's input is kept only when a LoRA branch reads it).

    Always: 2 residuals (RMSNorm inputs), q, k, v after RoPE and the attention output (SDPA, no s x s
    matrix), the attention log-sum-exp (fp32, one per head), gate, SiLU(gate) and up (the product's
    operands), the LoRA A outputs (r each) and two fp32 rsqrt. Plus, per input of the LoRA'd linears:
    with dropout one dropped copy + its mask per LoRA branch; without, one shared copy (none for o_proj's
    input, which is the attention output already counted)."""
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    total = b.stream * (2 * h + 3 * i) + b.matmul * (2 * h + 2 * kv) + 4 * (shape.num_heads + 2)
    total += b.matmul * r * len(targets)
    groups = {"attn_in": (h, ["q_proj", "k_proj", "v_proj"]), "o_in": (h, ["o_proj"]),
              "mlp_in": (h, ["gate_proj", "up_proj"]), "down_in": (i, ["down_proj"])}
    for gname, (size, members) in groups.items():
        k = sum(t in targets for t in members)
        if not k:
            continue
        if dropout > 0:
            total += k * size * (b.matmul + b.mask)
        elif gname != "o_in":
            total += size * b.stream
    return total


def logits_bytes_per_token(vocab: int, b: Bytes) -> float:
    """Peak of the loss head, at the start of backward: log_softmax's saved output, the gradient coming
    from nll_loss and log_softmax's input gradient (three fp32 [tokens, vocab] tensors; the logits
    themselves are freed once the Trainer drops the model outputs); with bf16 logits one more bf16 copy."""
    return vocab * (3 * 4 + (b.matmul if b.matmul != 4 else 0))


def activations(shape: ModelShape, tokens: int, targets: list[str], r: int, dropout: float, b: Bytes,
                gradient_checkpointing: bool, lm_head: bool = True) -> dict[str, float]:
    """Peak activation bytes of one micro-batch of `tokens` tokens, as parts. With gradient checkpointing
    (HF's, per decoder layer) only each layer's input is kept and one layer is recomputed at a time."""
    per_layer = layer_activation_bytes(shape, targets, r, dropout, b)
    head = logits_bytes_per_token(shape.vocab_size, b) if lm_head else 0.0
    rope = 2 * shape.head_dim * b.stream  # cos and sin, shared by all layers
    if gradient_checkpointing:
        kept = shape.num_layers * shape.hidden_size * b.stream + rope
        return {"activations (kept layer inputs)": tokens * kept,
                "activations (1 layer recomputed or loss head)": tokens * max(per_layer, head)}
    return {"activations (all layers)": tokens * (shape.num_layers * per_layer + shape.hidden_size * b.stream + rope),
            "loss head (logits, log-softmax, grads)": tokens * head}


@dataclass
class Estimate:
    preset: str
    stage: str
    device: str
    gradient_checkpointing: bool
    shape: ModelShape
    parts: list = field(default_factory=list)  # (name, bytes, note)
    notes: list = field(default_factory=list)

    def add(self, name: str, nbytes: float, note: str = "") -> None:
        self.parts.append((name, float(nbytes), note))

    @property
    def total(self) -> float:
        return sum(p[1] for p in self.parts)

    def fits(self) -> dict[int, bool]:
        return {gb: self.total <= gb * GIB for gb in CARDS_GB}

    def as_dict(self) -> dict:
        return {"preset": self.preset, "stage": self.stage, "device": self.device,
                "gradient_checkpointing": self.gradient_checkpointing, "model": self.shape.name,
                "params": self.shape.params(), "parts": {n: round(v) for n, v, _ in self.parts},
                "total_bytes": round(self.total), "total_gib": round(self.total / GIB, 3),
                "fits": {f"{gb}GB": ok for gb, ok in self.fits().items()}, "notes": self.notes}


def _trainable_dtype_bytes(stage: str, compute_dtype: str) -> int:
    # TRL's SFT/Reward trainers cast trainable weights to bf16 and training.restore_adapter_dtype puts them in the
    # compute dtype; peft itself (pretrain's Trainer, our PPO) keeps adapters in fp32.
    if stage in ("sft", "rm") and compute_dtype in ("bfloat16", "float16"):
        return 2
    return 4


def _weights(est: Estimate, shape: ModelShape, quant, model_dtype: str, lora_spec, stage: str,
             causal: bool = True) -> tuple[int, int]:
    """Frozen base + trainable parameters, gradients and AdamW states. Returns (trainable params, bytes each)."""
    if quant.load_in_4bit:
        est.add("base weights, nf4", nf4_bytes(shape.quantized_params(), quant.double_quant),
                f"{shape.quantized_params() / 1e6:.0f}M linear weights, 4 bit + absmax per {NF4_BLOCK}"
                + (f" (8-bit, double-quantised per {NF4_DQ_BLOCK})" if quant.double_quant else " (fp32)"))
        # prepare_model_for_kbit_training casts every non-4-bit parameter to fp32.
        est.add("base weights, not quantised (fp32)", shape.other_params(causal) * 4,
                "embeddings" + ("" if (shape.tie_embeddings or not causal) else ", lm_head") + ", norms, biases")
    else:
        nbytes = 2 if model_dtype in ("bfloat16", "float16") else 4
        est.add(f"base weights ({model_dtype})", shape.params() * nbytes)
    targets = lora_targets(shape, lora_spec.target_modules)
    n_lora = lora_params(shape, targets, lora_spec.r)
    n_mts = modules_to_save_params(shape, lora_spec.modules_to_save, causal)
    tb = _trainable_dtype_bytes(stage, quant.compute_dtype)
    est.add("LoRA weights", n_lora * tb, f"r={lora_spec.r} on {len(targets)} projections x {shape.num_layers} layers")
    if n_mts:
        est.add("modules_to_save copies", n_mts * tb, f"trainable copies of {', '.join(lora_spec.modules_to_save)}")
    n_train = n_lora + n_mts
    return n_train, tb


def _optimizer(est: Estimate, n_train: int, tb: int) -> None:
    est.add("gradients", n_train * tb, "one per trainable parameter")
    est.add("AdamW states", 2 * n_train * tb, "exp_avg and exp_avg_sq, in the parameters' dtype")


def stage_checkpointing(preset, stage: str) -> bool:
    """What the stage's training does: its `gradient_checkpointing` field (pretrain, sft, rm). Our PPO has none: its
    policy stays in eval mode, where HF's checkpointing does nothing."""
    return bool(getattr(getattr(preset, stage, None), "gradient_checkpointing", False))


def estimate(preset, stage: str, device: str = "gpu", gradient_checkpointing: bool | None = None,
             shape: ModelShape | None = None) -> Estimate:
    """Predicted peak memory of `stage` under `preset` on one device ("gpu": CUDA, bf16 where the preset says;
    "cpu": the same recipe in this machine's RAM, as bench_memory.py measures it). Gradient checkpointing as the
    stage's config says (`stage_checkpointing`), unless `gradient_checkpointing` is given (the benchmarks, which
    switch it on the model themselves)."""
    if stage not in STAGES:
        raise ZJError(f"Unknown stage '{stage}' for estimate. Known: {', '.join(STAGES)}")
    if device not in ("gpu", "cpu"):
        raise ZJError(f"device must be 'gpu' or 'cpu', got {device!r}")
    shape = shape or model_shape(preset)
    q = preset.quant
    b = act_bytes(q.compute_dtype if q.load_in_4bit else preset.model.dtype, device)
    gc = stage_checkpointing(preset, stage) if gradient_checkpointing is None else bool(gradient_checkpointing)
    est = Estimate(preset.name, stage, device, gc, shape)

    if stage in ("pretrain", "sft", "rm"):
        cfg = getattr(preset, stage)
        causal = stage != "rm"
        n_train, tb = _weights(est, shape, q, preset.model.dtype, cfg.lora, stage, causal)
        _optimizer(est, n_train, tb)
        if stage == "pretrain":
            seqs, length = cfg.batch_size, cfg.block_size
        elif stage == "sft":
            seqs, length = cfg.batch_size, cfg.max_length
            est.notes.append("SFT pads each batch to its longest example: max_length is the worst case")
        else:
            seqs, length = 2 * cfg.batch_size, cfg.max_length  # chosen and rejected in one forward
            est.notes.append("reward model: chosen and rejected answers of each pair go through together")
        targets = lora_targets(shape, cfg.lora.target_modules)
        for name, v in activations(shape, seqs * length, targets, cfg.lora.r, cfg.lora.dropout, b, gc,
                                   lm_head=causal).items():
            est.add(name, v, f"micro-batch {seqs} x {length} tokens")
    else:
        _ppo(est, preset, shape, b, gc)

    lin = max(a * o for a, o in shape.linears().values())
    est.add("dequantised weight workspace", 2 * lin * b.matmul if q.load_in_4bit else 0,
            "the largest projection dequantised for its matmul (forward or backward), and its cast")
    if device == "gpu":
        est.add("CUDA context (outside torch's counters)", CUDA_CONTEXT_BYTES, "typical; measure with nvidia-smi")
    if stage == "ppo":
        if gc:
            est.notes.append("gradient checkpointing counted, but our PPO does not checkpoint (eval-mode policy)")
    elif not gc:
        est.notes.append(f"gradient checkpointing off ({stage}.gradient_checkpointing=false); "
                         f"--set {stage}.gradient_checkpointing=true shows the saving")
    return est


def _ppo(est: Estimate, preset, shape: ModelShape, b: Bytes, gc: bool) -> None:
    """Our PPO (zj_utils.ppo): one nf4 policy with a LoRA adapter and a value head on its trunk; the reference is
    the same network with the adapter disabled (no second copy); the reward model is a second model."""
    from .config import LoraSpec

    cfg, q = preset.ppo, preset.quant
    spec = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules, modules_to_save=[])
    n_train, tb = _weights(est, shape, q, preset.model.dtype, spec, "ppo")
    n_train += shape.hidden_size + 1
    est.add("value head", (shape.hidden_size + 1) * 4, "a linear read-out on the policy's last hidden state")
    est.add("reference model", 0, "the policy with its adapter disabled: no second copy")
    # The reward model is loaded by common.load_for_inference: nf4 on a GPU (not prepared, so its unquantised
    # parts stay in the model dtype), full precision on a CPU.
    mdt = 2 if preset.model.dtype in ("bfloat16", "float16") else 4
    if est.device == "gpu" and q.load_in_4bit:
        rm = nf4_bytes(shape.quantized_params(), q.double_quant) + (shape.other_params(causal=False) + shape.hidden_size) * mdt
        est.add("reward model (nf4, frozen)", rm, "a second network: the merged reward model")
    else:
        est.add(f"reward model ({preset.model.dtype}, frozen)", (shape.params() + shape.hidden_size) * mdt,
                "a second network: the merged reward model")
    _optimizer(est, n_train, tb)

    B, mb, R = cfg.batch_size, cfg.mini_batch_size, cfg.max_new_tokens
    S = preset.model.max_length  # prompt + response: the sequence budget of the preset
    P = max(S - R, 1)
    V = shape.vocab_size
    est.notes.append(f"PPO sequences counted at model.max_length={S} tokens (prompt {P} + response {R})")
    # Three phases never overlap; the peak is the largest.
    kv = B * S * shape.num_layers * 2 * shape.kv_dim * b.matmul
    # compute_logprobs without grad over the whole rollout batch: the full logits [B, S, V] (fp32: lm_head is
    # fp32 after prepare_model_for_kbit_training), then [B, R, V] scaled logits, log-softmax, and the entropy's
    # log-softmax and its exp.
    scoring = B * (S + 4 * R) * V * 4
    targets = lora_targets(shape, spec.target_modules)
    acts = activations(shape, mb * S, targets, spec.r, spec.dropout, b, gc, lm_head=False)
    # with grad, per minibatch: full logits, scaled, log-softmax, entropy's log-softmax, exp and product, and
    # the gradients flowing back through them
    train_head = mb * (S + 6 * R) * V * 4
    train = sum(acts.values()) + train_head
    phases = {"generation KV cache": kv, "log-prob pass over the batch (no grad)": scoring,
              "PPO minibatch (activations + loss head)": train}
    worst = max(phases, key=phases.get)
    for name, v in phases.items():
        est.add(name if name == worst else f"({name}: not at peak)", v if name == worst else 0,
                f"{v / GIB:.2f} GiB" + (" <- peak phase" if name == worst else ""))
    est.notes.append(f"PPO phases: rollout B={B} x {S} KV cache, log-probs of B={B} sequences, "
                     f"updates on minibatches of {mb}; the peak is the largest of the three")


def format_table(est: Estimate) -> str:
    s = est.shape
    head = (f"zj estimate: preset {est.preset}, stage {est.stage}, {est.device}, gradient checkpointing "
            f"{'on' if est.gradient_checkpointing else 'off'}\n"
            f"model {s.name}: {s.params() / 1e6:.1f}M params ({s.num_layers} layers, hidden {s.hidden_size}, "
            f"intermediate {s.intermediate_size}, vocab {s.vocab_size}, heads {s.num_heads}/{s.num_kv_heads} kv)\n")
    w = max(len(p[0]) for p in est.parts)
    rows = [f"  {'part':<{w}}  {'GiB':>8}  note", f"  {'-' * w}  {'-' * 8}  ----"]
    for name, v, note in est.parts:
        rows.append(f"  {name:<{w}}  {v / GIB:8.3f}  {note}")
    rows.append(f"  {'TOTAL (peak)':<{w}}  {est.total / GIB:8.3f}")
    fits = "  ".join(f"{gb} GB: {'fits' if ok else 'does NOT fit'}" for gb, ok in est.fits().items())
    notes = "".join(f"note: {n}\n" for n in est.notes)
    return head + "\n".join(rows) + "\n" + fits + "\n" + notes


def gib(x: float) -> str:
    return f"{x / GIB:.2f}" if math.isfinite(x) else "nan"
