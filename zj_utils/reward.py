"""Stage 3: the reward model. As in the paper: sample 4 answers per prompt from the SFT model, rank them with
ties by the annotation rule (safety > professionalism > fluency; here the rule-based annotator plays the
experts), turn every ranking into all strictly ordered pairs, and train a reward model with TRL's
`RewardTrainer` (QLoRA, from the continued-pre-trained model) on -log sigmoid(r_chosen - r_rejected).
Rankings are also written in the ranking tool's own formats, so human rankings can replace or join them."""
from __future__ import annotations

import json
import random
from pathlib import Path

from .common import (ZJError, atomic_write_jsonl, begin_stage, count_params, is_main_process, load_for_inference,
                     load_model, load_tokenizer, merge_adapter, read_json, require, set_seed, wait_for_everyone,
                     world_dir, write_metrics)
from .common import pad_id as default_pad_id  # `pad_id` is a parameter name below
from .data import load_jsonl
from .rankings import (load_ranking_output, ranked_texts_to_ranks, to_preference_records, write_ranking_input,
                       write_ranking_output)
from .reward_report import accuracy_report, comparisons, format_report


def sample_and_rank(model, tokenizer, prompts: list[dict], kg: dict, cfg, seed: int) -> list[dict]:
    """4 sampled answers per prompt, ranked with ties by the rule-based annotator (1 = best)."""
    from .inference import generate_chat
    from .annotator import rank_answers

    convs = [p["messages"] for p in prompts]
    if cfg.temperatures:  # one candidate per temperature: variety from the sampler, as InstructGPT's from models
        if len(cfg.temperatures) != cfg.n_samples:
            raise ZJError(f"rm.temperatures has {len(cfg.temperatures)} values for rm.n_samples={cfg.n_samples}")
        per_t = [generate_chat(model, tokenizer, convs, cfg.max_new_tokens, batch_size=32, do_sample=True,
                               temperature=t, top_p=cfg.top_p, seed=seed + k, desc=f"sampling answers at T={t}")
                 for k, t in enumerate(cfg.temperatures)]
        answers = [[a[i][0] for a in per_t] for i in range(len(convs))]
    else:
        answers = generate_chat(model, tokenizer, convs, cfg.max_new_tokens, batch_size=max(1, 32 // cfg.n_samples),
                                do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                num_return_sequences=cfg.n_samples, seed=seed, desc="sampling answers to rank")
    return [{"id": p["id"], "messages": p["messages"], "responses": resp,
             "ranks": rank_answers(resp, p.get("expect", {}), kg), "annotator": "rule"}
            for p, resp in zip(prompts, answers)]


def rankings_to_pairs(rankings: list[dict]) -> list[dict]:
    out = []
    for r in rankings:
        for rec in to_preference_records(r["messages"], r["responses"], r["ranks"]):
            out.append(rec | {"prompt_id": r["id"]})
    return out


def pair_report(rankings: list[dict], n_pairs: int) -> dict:
    """Where the answer pairs of the rankings went: every unordered pair of answers to a prompt either became a
    preference pair or was dropped for a reason (in = kept + dropped)."""
    tied = same_text = candidates = 0
    for r in rankings:
        n = len(r["responses"])
        candidates += n * (n - 1) // 2
        for i in range(n):
            for j in range(i + 1, n):
                if r["ranks"][i] == r["ranks"][j]:
                    tied += 1
                elif r["responses"][i] == r["responses"][j]:
                    same_text += 1
    return {"in": candidates, "kept": n_pairs,
            "dropped": {"tied": tied, "identical_text": same_text,
                        # the same (chosen, rejected) texts twice: two identical answers beating a third
                        "duplicate": candidates - tied - same_text - n_pairs}}


def split_by_prompt(rankings: list[dict], dev_fraction: float, seed: int, test_fraction: float = 0.0):
    """The ids of the rankings held out for dev (and, with `test_fraction`, for test: then a pair of sets). The
    split is by prompt, not by pair, so no held-out prompt is seen in training; a prompt ranked twice (by the
    annotator and by a person, or twice by the annotator) is one group, named by its first id, and lands on one side
    only. Dev takes the first share of the shuffled groups whatever `test_fraction` is, so adding a test split
    leaves the dev split as it was."""
    key = lambda r: json.dumps(r["messages"], ensure_ascii=False, sort_keys=True)
    first_id: dict[str, str] = {}
    for r in sorted(rankings, key=lambda r: r["id"]):
        first_id.setdefault(key(r), r["id"])
    groups = sorted(set(first_id.values()))
    random.Random(seed).shuffle(groups)
    n_dev = max(1, int(round(len(groups) * dev_fraction)))
    dev_groups = set(groups[:n_dev])
    dev = {r["id"] for r in rankings if first_id[key(r)] in dev_groups}
    if not test_fraction:
        return dev
    test_groups = set(groups[n_dev:n_dev + max(1, int(round(len(groups) * test_fraction)))])
    return dev, {r["id"] for r in rankings if first_id[key(r)] in test_groups}


def subsample_prompts(pairs: list[dict], fraction: float, seed: int) -> list[dict]:
    """The pairs of a seeded `fraction` of their prompts (whole prompts: a prompt keeps all its pairs or none),
    in their order. fraction >= 1 keeps everything; at least one prompt is kept."""
    if fraction >= 1:
        return pairs
    if fraction <= 0:
        raise ZJError(f"rm.train_fraction must be in (0, 1], got {fraction}")
    ids = sorted({p["prompt_id"] for p in pairs})
    random.Random(seed).shuffle(ids)
    keep = set(ids[:max(1, int(round(len(ids) * fraction)))])
    return [p for p in pairs if p["prompt_id"] in keep]


def human_rankings(path: str | Path) -> list[dict]:
    """Rankings from the ranking tool's TSV (rank1 = best) or the ranking widget's JSONL (which keeps ties the
    TSV cannot express), in the same shape as the annotator's."""
    if Path(path).suffix == ".jsonl":
        from .ranking_store import read_saved_rankings
        return read_saved_rankings(path)
    recs = []
    for r in load_ranking_output(path):
        responses, ranks = ranked_texts_to_ranks(r["ranked"])
        recs.append({"id": f"tool-{r['id']}", "messages": r["messages"], "responses": responses, "ranks": ranks,
                     "annotator": "human"})
    return recs


def reward_text(tokenizer, messages: list[dict], answer: str) -> str:
    """The one string the reward model reads for `answer` to the chat `messages`: the whole conversation in the
    chat template, the answer as its last (assistant) turn. Reward-model training, PPO, GRPO/RLOO and evaluation
    all build their input here, so the score is read at the token the model was trained to score at (for a
    ChatML template that is the `\\n` after `<|im_end|>`, not the EOS a policy stops on)."""
    conv = [{"role": m["role"], "content": m["content"]} for m in messages]
    # stripped as generate_chat strips the answers the reward model is trained on
    return tokenizer.apply_chat_template(conv + [{"role": "assistant", "content": answer.strip()}], tokenize=False)


def reward_ids(tokenizer, messages: list[dict], answer: str) -> list[int]:
    # the template holds BOS where the model wants it: no special tokens added on top
    return tokenizer(reward_text(tokenizer, messages, answer), add_special_tokens=False)["input_ids"]


def reward_inputs(tokenizer, conversations: list[list[dict]], answers: list[str], pad_id: int | None = None) -> dict:
    """`reward_ids` of each (conversation, answer), right-padded (the score is pooled at the last non-pad token,
    and right padding leaves every real token's position as in the unpadded text): input_ids, attention_mask."""
    import torch

    if len(conversations) != len(answers):
        raise ValueError(f"{len(conversations)} conversations but {len(answers)} answers")
    if pad_id is None:
        pad_id = default_pad_id(tokenizer)
    seqs = [reward_ids(tokenizer, c, a) for c, a in zip(conversations, answers)]
    width = max(map(len, seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def reward_scores(model, tokenizer, conversations: list[list[dict]], answers: list[str], batch_size: int = 16):
    """Reward-model score [N] (float32, CPU) of each answer to its conversation, on `reward_inputs`."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if cfg.pad_token_id is None:  # a sequence classifier cannot find the last token of a padded row without it
        cfg.pad_token_id = default_pad_id(tokenizer)
    out = []
    with torch.no_grad():
        for i in range(0, len(answers), batch_size):
            enc = reward_inputs(tokenizer, conversations[i:i + batch_size], answers[i:i + batch_size],
                                pad_id=cfg.pad_token_id)
            out.append(model(input_ids=enc["input_ids"].to(dev),
                             attention_mask=enc["attention_mask"].to(dev)).logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _split_answer(conversation: list[dict]) -> tuple[list[dict], str]:
    if not conversation or conversation[-1]["role"] != "assistant":
        raise ValueError("a conversation to score must end with the assistant's answer")
    return conversation[:-1], conversation[-1]["content"]


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16):
    """Reward-model score of each full conversation (its last turn is the answer being judged)."""
    split = [_split_answer(c) for c in conversations]
    return reward_scores(model, tokenizer, [m for m, _ in split], [a for _, a in split], batch_size)


def preference_dataset(tokenizer, pairs: list[dict]):
    """RewardTrainer's training set: each pair's chosen and rejected `reward_ids`, pre-tokenised.
    Why ids: TRL 1.16 tokenises strings itself, appending EOS to any not ending in it (a ChatML text ends in
    `<|im_end|>\\n`) and adding special tokens; `chosen_ids`/`rejected_ids` it takes as they are."""
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": reward_ids(tokenizer, p["prompt"], _split_answer(p["chosen"])[1]),
                               "rejected_ids": reward_ids(tokenizer, p["prompt"], _split_answer(p["rejected"])[1])}
                              for p in pairs])


def pairwise_accuracy(model, tokenizer, pairs: list[dict], batch_size: int = 16) -> dict:
    """Share of pairs where the reward model scores the chosen answer above the rejected one."""
    if not pairs:
        return {"pairs": 0, "accuracy": None, "mean_margin": None}
    chosen = score_conversations(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], batch_size)
    rejected = score_conversations(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], batch_size)
    margin = chosen - rejected
    return {"pairs": len(pairs), "accuracy": round((margin > 0).float().mean().item(), 4),
            "mean_margin": round(margin.mean().item(), 4)}


def run_rm(preset, out: str | Path, seed: int = 0, extra_rankings: list[str] | None = None,
           resume: bool = False) -> dict:
    from accelerate import PartialState
    from trl import RewardConfig, RewardTrainer

    from .training import (AtomicCheckpointCallback, BestOnDevCallback, JsonlLogCallback, mean_train_loss,
                           prepare_qlora, restore_adapter_dtype, resume_step, train_resumable, training_args)

    cfg = preset.rm
    # Under torchrun / accelerate launch: join the process group now; the main process writes, the others wait
    with PartialState().main_process_first():
        d, timer = begin_stage("rm", preset, out, seed, resume, rm=cfg, extra_rankings=extra_rankings or [],
                               model=preset.model, quant=preset.quant)
    world = world_dir(out)
    kg = read_json(world / "world.json")
    prompts = load_jsonl(world / "rank_prompts.jsonl")
    if cfg.max_prompts > 0:
        prompts = prompts[:cfg.max_prompts]

    sft_path = str(require(Path(out) / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    tokenizer = load_tokenizer(sft_path, preset.model.trust_remote_code)
    sampled_path = d / "sampled_rankings.jsonl"
    read_back = resume and sampled_path.exists()
    wait_for_everyone()  # under several processes: every rank has looked before the main one writes the file
    if read_back:  # written atomically once sampling was done: never sample twice
        rankings = load_jsonl(sampled_path)
    else:
        # one process samples and the others read its answers back: every rank must train on the same pairs
        if is_main_process():
            policy = load_for_inference(sft_path, preset)
            rankings = sample_and_rank(policy, tokenizer, prompts, kg, cfg, seed)
            del policy
            atomic_write_jsonl(sampled_path, rankings)
        wait_for_everyone()
        if not is_main_process():
            rankings = load_jsonl(sampled_path)
    for path in extra_rankings or []:
        rankings += human_rankings(path)
    write_rankings(d, rankings)

    # Three splits by prompt: train, dev (picks the stopping point) and test (reported, never used to choose).
    dev_ids, test_ids = split_by_prompt(rankings, cfg.dev_fraction, seed, cfg.test_fraction)
    pairs = rankings_to_pairs(rankings)
    train_pairs = subsample_prompts([p for p in pairs if p["prompt_id"] not in dev_ids | test_ids],
                                    cfg.train_fraction, seed)
    dev_pairs = [p for p in pairs if p["prompt_id"] in dev_ids]
    test_pairs = [p for p in pairs if p["prompt_id"] in test_ids]
    ties = sum(len(r["ranks"]) - len(set(r["ranks"])) for r in rankings)
    all_tied = sum(len(set(r["ranks"])) == 1 for r in rankings)
    too_long = [p for p in train_pairs if _too_long(tokenizer, p, cfg.max_length)]
    train_pairs = [p for p in train_pairs if p not in too_long]
    if not train_pairs:
        raise ZJError(f"No training pairs for the reward model: {len(rankings)} rankings, {all_tied} with all answers "
                      "tied. Sample more prompts (rm.max_prompts) or at a higher temperature (rm.temperature).")

    # the paper trains the reward model from the pre-trained base; "sft" starts it from the SFT model instead
    init = str(Path(out) / cfg.init_from / "merged")
    # The new score head is drawn at random: seed it here, so that it does not depend on whether this run sampled
    # the answers itself or (resumed) read them back.
    set_seed(seed)
    rm = load_model(init, preset.model, preset.quant, kind="seqcls")
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm = prepare_qlora(rm, cfg.lora, task_type="SEQ_CLS", quantized=preset.quant.load_in_4bit)
    before = pairwise_accuracy(rm, tokenizer, test_pairs)
    per_epoch = -(-len(train_pairs) // (cfg.batch_size * getattr(cfg, "grad_accum", 1)))
    start = resume_step(d, resume)
    stopper = BestOnDevCallback(d / "best_on_dev.safetensors", cfg.patience, start) if dev_pairs else None
    early = dict(eval_strategy="steps", eval_steps=max(1, per_epoch // max(1, cfg.evals_per_epoch))) if stopper else {}
    args = training_args(RewardConfig, cfg, d, seed, preset, max_length=None, remove_unused_columns=True, **early)
    trainer = RewardTrainer(model=rm, args=args, processing_class=tokenizer,
                            train_dataset=preference_dataset(tokenizer, train_pairs),
                            eval_dataset=preference_dataset(tokenizer, dev_pairs) if stopper else None,
                            callbacks=[JsonlLogCallback(d / "log.jsonl", start),
                                       AtomicCheckpointCallback()] + ([stopper] if stopper else []))
    restore_adapter_dtype(trainer.model, preset)
    result = train_resumable(trainer, d, resume)
    wait_for_everyone()  # the best weights on dev are written by the main process
    best = stopper.restore(trainer.model) if stopper else None
    after_dev = pairwise_accuracy(rm, tokenizer, dev_pairs)
    after_test = pairwise_accuracy(rm, tokenizer, test_pairs)
    after_train = pairwise_accuracy(rm, tokenizer, train_pairs)
    report = _test_report(rm, tokenizer, [r for r in rankings if r["id"] in test_ids], prompts, kg, seed)
    if is_main_process():  # every rank holds the same adapter and the same report
        (d / "report.md").write_text(format_report(report) + "\n", encoding="utf-8")
        rm.save_pretrained(d / "adapter", safe_serialization=True)
        merge_adapter(init, d / "adapter", d / "merged", preset.model, kind="seqcls", tokenizer=tokenizer)
    metrics = {
        "prompts": len(prompts), "distinct_prompts": len({json.dumps(p["messages"], ensure_ascii=False)
                                                          for p in prompts}),
        "rankings": len(rankings), "answers_per_prompt": cfg.n_samples,
        "tied_answers": ties, "rankings_all_tied": all_tied, "pairs": len(pairs),
        "pair_report": pair_report(rankings, len(pairs)),
        "train_prompts": len({p["prompt_id"] for p in train_pairs}),
        "train_pairs": len(train_pairs), "dev_pairs": len(dev_pairs), "test_pairs": len(test_pairs),
        "dropped_too_long": len(too_long), "steps": result.global_step, "train_loss": mean_train_loss(trainer),
        "trainable_params": count_params(rm)["trainable"],
        "best_step": best["step"] if best else None, "best_epoch": best["epoch"] if best else None,
        "test_accuracy_before": before["accuracy"], "dev_accuracy": after_dev["accuracy"],
        "test_accuracy": after_test["accuracy"], "test_mean_margin": after_test["mean_margin"],
        "train_accuracy": after_train["accuracy"],
        "test_report": {"overall": report["overall"], "by_dimension": report["by_dimension"],
                        "by_flaw": report["by_flaw"], "by_gap": report["by_gap"], "by_kind": report["by_kind"]},
        "dev_history": stopper.history if stopper else [],
    }
    timings = {"seconds": timer(), "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
               "resumed_from_step": start or 0, "sampling_read_back": read_back}
    return write_metrics(d, metrics, timings)


def write_rankings(d: Path, rankings: list[dict]) -> None:
    """OUT/rm/rankings.jsonl and the ranking tool's formats: its input (prompt + 4 answers) and its output (answers
    best to worst). Written by the main process only: under several processes every rank holds the same rankings."""
    if not is_main_process():
        return
    atomic_write_jsonl(d / "rankings.jsonl", rankings)
    write_ranking_input(d / "ranking_input.json", rankings)
    write_ranking_output(d / "ranking_output.tsv", [
        {"id": r["id"], "messages": r["messages"],
         "ranked": [t for _, t in sorted(zip(r["ranks"], r["responses"]), key=lambda x: x[0])]} for r in rankings])


def _test_report(model, tokenizer, rankings: list[dict], prompts: list[dict], kg: dict, seed: int) -> dict:
    """reward_report's accuracy report on held-out rankings: every answer scored once, every ordered pair compared."""
    convs = [r["messages"] + [{"role": "assistant", "content": a}] for r in rankings for a in r["responses"]]
    flat = score_conversations(model, tokenizer, convs).tolist()
    scores, i = [], 0
    for r in rankings:
        scores.append(flat[i:i + len(r["responses"])])
        i += len(r["responses"])
    return accuracy_report(comparisons(rankings, scores, {p["id"]: p for p in prompts}, kg), seed=seed)


def _too_long(tokenizer, pair: dict, max_length: int) -> bool:
    # measured on what the reward model is trained on
    return any(len(reward_ids(tokenizer, pair["prompt"], _split_answer(pair[k])[1])) > max_length
               for k in ("chosen", "rejected"))


def load_reward_model(out: str | Path, preset):
    """The merged reward model (a 1-output sequence classifier), frozen, for PPO and evaluation."""
    path = str(require(Path(out) / "rm" / "merged", "The reward model", "Run `zj rm` first, with the same --out."))
    model = load_for_inference(path, preset, kind="seqcls")
    model.eval().requires_grad_(False)
    return model


# ---------------------------------------------------------------- the mechanism, shown step by step (notebook 04)

def tie_example(rankings: list[dict]) -> dict | None:
    """The first ranking with both a tie and a strict preference (so it gives pairs and drops one), else the first
    with a strict preference, else None."""
    strict = [r for r in rankings if len(set(r["ranks"])) > 1]
    return next((r for r in strict if len(set(r["ranks"])) < len(r["ranks"])), strict[0] if strict else None)


def scored_token(tokenizer, messages: list[dict], answer: str, model=None) -> dict:
    """Where the reward model reads its score on the input `reward_ids` builds for (messages, answer): a sequence
    classifier scores every position and keeps the one at the last id that is not the pad id (right padding puts
    the pad ids after it). Returns ids, tokens (each id decoded alone) and `index`; with `model`, also `score`
    (the model's output) and `score_at_index` (its score head applied by hand to the last hidden state at
    `index`), which must agree."""
    import torch

    ids = reward_ids(tokenizer, messages, answer)
    cfg = None if model is None else (model.config.get_text_config() if hasattr(model.config, "get_text_config")
                                      else model.config)
    pad = cfg.pad_token_id if cfg is not None and cfg.pad_token_id is not None else default_pad_id(tokenizer)
    index = max((i for i, t in enumerate(ids) if t != pad), default=0)
    out = {"ids": ids, "tokens": [tokenizer.decode([t]) for t in ids], "index": index}
    if model is not None:
        dev = next(model.parameters()).device
        x = torch.tensor([ids], device=dev)
        with torch.no_grad():
            score = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, 0]
            hidden = getattr(model, model.base_model_prefix)(input_ids=x).last_hidden_state
            by_hand = model.score(hidden[0, index].to(model.score.weight.dtype))[0]
        out |= {"score": float(score), "score_at_index": float(by_hand)}
    return out


def marked_tokens(tokens: list[str], index: int, width: int = 0) -> str:
    """Tokens joined by "|" with the scored one in ⟦ ⟧; `width` > 0 keeps only the last `width` tokens."""
    shown = [f"⟦{t}⟧" if i == index else t for i, t in enumerate(tokens)]
    cut = width > 0 and len(shown) > width
    return ("… " if cut else "") + "|".join(shown[-width:] if cut else shown)


def pairwise_loss_by_hand(model, tokenizer, pairs: list[dict]) -> dict:
    """The reward model's pairwise loss (InstructGPT's, Ouyang et al. 2022), written out: each answer scored alone
    through the project's input builder (`reward_scores`), then per pair -log sigmoid(r_chosen - r_rejected), and
    their mean. Returns r_chosen, r_rejected, per_pair (lists) and loss (float)."""
    import torch.nn.functional as F

    prompts = [p["prompt"] for p in pairs]
    r_c = reward_scores(model, tokenizer, prompts, [_split_answer(p["chosen"])[1] for p in pairs])
    r_r = reward_scores(model, tokenizer, prompts, [_split_answer(p["rejected"])[1] for p in pairs])
    per_pair = -F.logsigmoid(r_c - r_r)
    return {"r_chosen": r_c.tolist(), "r_rejected": r_r.tolist(), "per_pair": per_pair.tolist(),
            "loss": float(per_pair.mean())}


def trainer_pairwise_loss(model, tokenizer, pairs: list[dict], preset, work_dir, seed: int = 0) -> dict:
    """The loss TRL's RewardTrainer computes on `pairs` as one batch, with the arguments `run_rm` gives it: the
    pairs go through `preference_dataset` and the trainer's own collator (chosen rows, then rejected rows, padded),
    then `RewardTrainer.compute_loss`, the function behind every loss the stage logs. Returns loss (float) and the
    trainer's r_chosen, r_rejected (lists). Nothing is trained; `work_dir` is only the trainer's output folder."""
    import warnings

    import torch
    from trl import RewardConfig, RewardTrainer

    from .training import training_args

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed arguments, as in the stage's log
        args = training_args(RewardConfig, preset.rm, Path(work_dir), seed, preset, max_length=None,
                             remove_unused_columns=True, disable_tqdm=True)
        trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                train_dataset=preference_dataset(tokenizer, pairs))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    dev = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, {k: v.to(dev) for k, v in batch.items()}, return_outputs=True)
    rewards = outputs.logits[:, 0].float().cpu()
    return {"loss": float(loss), "r_chosen": rewards[:len(pairs)].tolist(), "r_rejected": rewards[len(pairs):].tolist()}


GOLD_SETS = ("test_single", "test_safety", "test_multiturn")


def gold_vs_flawed(model, tokenizer, world: str | Path, sets: tuple[str, ...] = GOLD_SETS) -> list[dict]:
    """The reward model's scores of the world's gold answer and of its flawed twin (the same answer with one
    realistic flaw: it concludes without asking, recommends the contraindicated drug, misses the emergency) for
    every held-out test prompt that has one: {"id", "set", "flaw", "gold", "flawed"}. The reward model never saw
    these prompts, nor any gold answer: it was trained on rankings of the SFT model's samples."""
    world = Path(world)
    items = {(f"{s}.jsonl", it["id"]): it for s in sets for it in load_jsonl(world / f"{s}.jsonl")}
    picked = [(g, items[(g["file"], g["id"])]) for g in load_jsonl(world / "gold.jsonl")
              if g.get("flawed") and (g["file"], g["id"]) in items]
    convs = [it["messages"] for _, it in picked]
    gold = reward_scores(model, tokenizer, convs, [g["gold"] for g, _ in picked]).tolist()
    flawed = reward_scores(model, tokenizer, convs, [g["flawed"] for g, _ in picked]).tolist()
    return [{"id": g["id"], "set": g["file"].removesuffix(".jsonl"), "flaw": g["flaw"], "gold": a, "flawed": b}
            for (g, _), a, b in zip(picked, gold, flawed)]


def flaw_table(rows: list[dict]) -> dict[str, dict]:
    """`gold_vs_flawed` rows by flaw type, then "all": n, mean score of the gold and of the flawed answers, mean
    margin (gold - flawed) and the share of prompts where the gold answer scores higher."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["flaw"], []).append(r)
    out = {}
    for name, rs in sorted(groups.items()) + ([("all", rows)] if rows else []):
        n = len(rs)
        out[name] = {"n": n, "gold_mean": round(sum(r["gold"] for r in rs) / n, 4),
                     "flawed_mean": round(sum(r["flawed"] for r in rs) / n, 4),
                     "margin_mean": round(sum(r["gold"] - r["flawed"] for r in rs) / n, 4),
                     "gold_higher": round(sum(r["gold"] > r["flawed"] for r in rs) / n, 4)}
    return out


def accuracy_by_epoch(log_path: str | Path) -> list[dict]:
    """Train and dev pairwise accuracy per epoch, from the stage's log.jsonl (every trainer log line). Train: the
    mean of the train-batch accuracies logged in the epoch (each measured on its batch by the weights of that
    moment, before the step); dev: the last evaluation in the epoch. Epoch e holds the logs with epoch in
    (e-1, e]. Returns [{"epoch", "train_accuracy", "train_loss", "dev_accuracy", "dev_loss", "last_step"}]."""
    import math

    by_epoch: dict[int, dict] = {}
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "epoch" not in rec:
            continue
        e = by_epoch.setdefault(max(1, math.ceil(rec["epoch"] - 1e-9)), {"train": [], "loss": [], "dev": None})
        if "accuracy" in rec and "loss" in rec:
            e["train"].append(rec["accuracy"])
            e["loss"].append(rec["loss"])
            e["last_step"] = rec.get("step")
        if "eval_accuracy" in rec:
            e["dev"] = (rec["eval_accuracy"], rec.get("eval_loss"))
            e["last_step"] = rec.get("step")
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return [{"epoch": k, "train_accuracy": mean(v["train"]), "train_loss": mean(v["loss"]),
             "dev_accuracy": v["dev"][0] if v["dev"] else None, "dev_loss": v["dev"][1] if v["dev"] else None,
             "last_step": v.get("last_step")} for k, v in sorted(by_epoch.items())]
