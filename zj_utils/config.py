"""Every stage's settings as a dataclass, and `Preset`, one of each: the bottom of the package, importing none of it.

The named presets (`tiny`, `smoke`, real-model ones) are overrides of these defaults, in zj_utils/presets.py.
The stages import their own config from here (world: `WorldConfig`, ppo: `PPOConfig`, align: `AlignConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorldConfig:
    n_diseases: int = 24                 # even: look-alike pairs in a department
    pretrain_only_frac: float = 0.25     # share of PAIRS seen only in pre-training text
    passages_per_disease: int = 12       # pre-training texts per disease (passage / triples / Q&A in turn)
    heldout_per_disease: int = 3         # held-out phrasings per disease, for perplexity
    n_general_texts: int = 3000
    general_fact_share: float = 0.5  # share of general texts that state facts about invented towns
    general_chat_share: float = 0.2  # share rendered as everyday chats in the chat template
    sft_single_per_disease: int = 8
    sft_multiturn_per_disease: int = 10
    n_sft_nlp: int = 150
    n_sft_general: int = 150
    sft_safety_per_disease: int = 6
    sft_noise_rate: float = 0.3          # SFT doctor answers with one realistic flaw (what RLHF later fixes)
    # about 1,000 ranked prompts over the 18 diseases SFT shows, as the paper's ~20,000 ranked outputs in miniature
    rank_prompts_per_disease: int = 56
    # 9 x 24 diseases = 216 items per test set, enough to resolve a difference of ~0.1 in a rate
    test_per_disease: int = 9
    # Tests in the training phrasings (new items, never a copy of a training prompt), as CMtMedQA's test set
    # is to its training set; True uses phrasings no training text uses, a harder test of generalisation.
    heldout_test_phrasings: bool = False
    contra_rate: float = 0.5             # dialogues where the patient has the contraindication
    red_flag_rate: float = 0.3           # dialogues where the patient reports a red flag


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
    # HF's gradient checkpointing per decoder layer (non-reentrant): keep each layer's input only and recompute the
    # layer in backward, ~1/3 more compute for far fewer activations; `zj estimate` counts what it saves
    gradient_checkpointing: bool = False


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
    gradient_checkpointing: bool = False  # as pretrain.gradient_checkpointing
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
    batch_size: int = 16  # pairs per micro-batch and process (chosen and rejected go through together)
    grad_accum: int = 1  # micro-batches per optimizer step: pairs per step = batch_size x grad_accum x processes
    max_length: int = 320
    save_every: int = 100  # checkpoint every N optimizer steps (0: never); `zj rm --resume` continues from it
    gradient_checkpointing: bool = False  # as pretrain.gradient_checkpointing


@dataclass
class PPOConfig:
    steps: int = 60                  # PPO iterations (rollout + update)
    batch_size: int = 16             # prompts per rollout (per process)
    mini_batch_size: int = 8         # sequences per gradient step
    ppo_epochs: int = 2              # passes over each rollout batch
    learning_rate: float = 3e-4      # LoRA + value head (1e-4 moved greedy answers too little in 60 steps)
    weight_decay: float = 0.0        # AdamW's; not its default 0.01, which pulls the LoRA toward 0, i.e. the reference
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    max_new_tokens: int = 48         # response length cap; a response cut here has no EOS
    temperature: float = 1.0         # sampling temperature; log-probs are taken of the same tempered softmax
    top_p: float = 1.0
    normalize_reward: bool = True    # score -> gain * score + bias, so the SFT policy's answers score mean 0, std 1
                                     # (Ziegler et al. 2019): kl_coef and the penalty then mean the same for any RM
    norm_samples: int = 64           # answers sampled from the SFT policy (adapter off), on training prompts, to fit it
    kl_coef: float = 0.05            # beta: per-token KL penalty (the start value when adaptive_kl)
    kl_estimator: str = "k1"         # "k1" or "k3"
    adaptive_kl: bool = False        # adapt beta toward target_kl (Ziegler et al.); False: beta stays kl_coef
    target_kl: float = 6.0           # adaptive_kl: the per-sequence KL (nats) to hold
    horizon: int = 0                 # adaptive_kl: samples over which a KL error held at its clip (+-20%) moves beta
                                     # by e^0.2; 0: a tenth of this run's samples (beta can move e^2 = 7.4x per run)
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    whiten_advantages: bool = True
    missing_eos_penalty: float = -1.0  # added to the (normalised) score of a response with no EOS: in SFT-score stds
    log_every: int = 1
    save_every: int = 10             # checkpoint every N steps (0: only at the end); resume with resume=True
    judge_every: int = 10            # every N steps (and at 0 and the end) the RM's and the rule judge's scores of
                                     # greedy answers to a fixed held-out probe set -> judge_probe.jsonl (0: off)
    judge_probe_prompts: int = 24    # that probe set's size, an equal share from each test kind


@dataclass
class AlignConfig:
    # The defaults give every method PPO's budget in the tiny preset, step for step (tests/test_align.py keeps
    # them equal): PPO takes 60 rollout batches of 16, 2 epochs over each in minibatches of 8 = 240 optimizer
    # steps of 8 sequences at a constant learning rate. GRPO/RLOO: a generation batch of 16 completions
    # (batch_size x steps_per_generation = 4 prompts x 4 answers), reused for num_iterations passes in
    # minibatches of batch_size, with the same clipped ratio: 240 steps of 8, 960 sampled completions. DPO:
    # 240 steps of 8 pairs.
    max_steps: int = 240              # optimizer steps (-1: use epochs)
    epochs: float = 1.0
    learning_rate: float = 3e-4
    lr_scheduler_type: str = "constant"  # PPO's schedule (TRL's default is linear decay)
    batch_size: int = 8               # per optimizer step: completions (GRPO/RLOO) or pairs (DPO); = ppo.mini_batch_size
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    steps_per_generation: int = 2     # GRPO/RLOO: optimizer steps per generation batch and pass (= ppo.batch_size / mini)
    num_iterations: int = 2           # GRPO/RLOO: passes over each generation batch (= ppo.ppo_epochs)
    num_generations: int = 4          # answers per prompt (GRPO/RLOO); must divide batch_size x steps_per_generation
    max_completion_length: int = 48   # as ppo.max_new_tokens
    temperature: float = 1.0
    # beta means something else in each method; the defaults are the values each method's own papers/docs use at
    # this scale, not one number carried across:
    #   GRPO: weight of a per-token k3 KL term in the loss (advantages are group-normalised, std 1);
    #   RLOO: per-sequence k1 KL (summed over tokens) subtracted from the score before the leave-one-out
    #         baseline, i.e. PPO's kl_coef with PPO's reward normalisation (normalize_reward below);
    #   DPO:  dpo_beta, the inverse temperature of the implicit reward beta * log(pi / pi_ref).
    beta: float = 0.05                # GRPO/RLOO, as ppo.kl_coef
    dpo_beta: float = 0.1             # DPO's own beta
    normalize_reward: bool = True     # GRPO/RLOO: PPO's affine reward normalisation (SFT answers -> mean 0, std 1),
                                      # fitted the same way (ppo.norm_samples answers), so beta and the penalty mean
                                      # what they mean in PPO
    missing_eos_penalty: float = -1.0  # GRPO/RLOO: added to the score of a completion without EOS, as in our PPO
    max_length: int = 320             # DPO: prompt + answer tokens
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"


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
