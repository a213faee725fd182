"""Check (NOT a test, not run in CI) behind two statements in docs/BENCHMARKS.md's PPO section: what TRL 1.12's
PPOTrainer reads from the reward model and logs as KL, next to what ours does, on one finished run.

    .bench_venv/bin/python benchmarks/trl_ppo_reward_read.py --run runs/tiny-seed0     # ~20 s on 1 thread

(.bench_venv/ is the virtual environment benchmarks/bench_ppo_vs_trl.py makes.)

It samples answers to training prompts from the SFT policy with TRL's own rollout code (batch_generation under
unwrap_model_for_generation, as PPOTrainer.train calls it) and prints
1. whether the generation config's suppressed tokens (the tiny model's byte-fallback tokens) are sampled, and the
   per-sequence sum of TRL's rollout log-prob (from generate's processed scores: suppressed tokens removed) minus
   the raw-logit log-prob TRL takes for the reference. With the policy equal to the reference this is what
   TRL logs as `objective/kl` at its first update, where the true KL is 0;
2. TRL's reward read (get_reward on its truncated query+response ids) against ours (reward_scores on
   reward.reward_text of the decoded answer), for answers with and without EOS.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=64, help="answers to sample")
    ap.add_argument("--response-length", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig
    from trl.experimental.ppo.ppo_trainer import batch_generation, forward, truncate_response
    from trl.experimental.utils import first_true_indices, get_reward
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer.utils import selective_log_softmax

    sys.path.insert(0, str(ROOT))
    from zj_utils.data import load_jsonl
    from zj_utils.reward import reward_scores

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    tok = AutoTokenizer.from_pretrained(str(run / "sft" / "merged"))
    pol = AutoModelForCausalLM.from_pretrained(str(run / "sft" / "merged"), dtype=torch.float32).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(str(run / "rm" / "merged"), dtype=torch.float32).eval()
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id
    pol.generation_config.eos_token_id = tok.eos_token_id  # as PPOTrainer sets it (stop_token="eos")
    msgs = [r["messages"] for r in load_jsonl(run / "world" / "rank_prompts.jsonl")][:args.n]
    enc = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for m in msgs]
    width, pad = max(map(len, enc)), tok.pad_token_id
    q = torch.tensor([[pad] * (width - len(e)) + e for e in enc])  # left-padded, as TRL's dataloader collates
    kw = {"max_new_tokens": args.response_length, "temperature": 1.0 + 1e-7, "top_k": 0.0, "top_p": 1.0,
          "do_sample": True}  # PPOTrainer.train's generation_kwargs
    suppressed = torch.tensor(pol.generation_config.suppress_tokens or [], dtype=torch.long)
    with torch.no_grad(), unwrap_model_for_generation(pol, Accelerator(cpu=True), generation_kwargs=kw) as m:
        qr, logits = batch_generation(m, q, 16, pad, GenerationConfig(**kw))
        resp = qr[:, width:]
        roll = selective_log_softmax(logits, resp)
        raw = selective_log_softmax(forward(pol, qr, pad).logits[:, width - 1:-1] / (1.0 + 1e-7), resp)
        post = truncate_response(tok.eos_token_id, pad, resp)
        last = first_true_indices(post == pad) - 1
        live = torch.arange(resp.shape[1]).unsqueeze(0) <= last.unsqueeze(1)
        gap = ((roll - raw) * live).sum(1)
        _, trl_read, _ = get_reward(rm, torch.cat((q, post), 1), pad, width)
    texts = []
    for r in post.tolist():
        r = [t for t in r if t != pad]
        texts.append(tok.decode(r[:-1] if r and r[-1] == tok.eos_token_id else r, skip_special_tokens=True))
    ours = reward_scores(rm, tok, msgs, texts, batch_size=16)
    eos = (post == tok.eos_token_id).any(1)
    d = (trl_read - ours).abs()
    print(f"{run}: {len(msgs)} sampled answers, EOS in {int(eos.sum())}")
    print(f"1. suppressed tokens in the config: {len(suppressed)}; sampled: {int(torch.isin(resp, suppressed).sum())}"
          f" of {int(live.sum())} answer tokens. TRL rollout log-prob - raw log-prob, summed per answer (TRL's "
          f"logged KL of a policy equal to its reference): mean {gap.mean():.3f}, min {gap.min():.3f}, "
          f"max {gap.max():.3f}")
    print(f"2. |TRL's reward read - ours|: answers with EOS mean {d[eos].mean():.4f} (median "
          f"{d[eos].median():.4f}, max {d[eos].max():.4f}); without EOS "
          + (f"mean {d[~eos].mean():.4f} (n={int((~eos).sum())})" if (~eos).any() else "none")
          + f"; the score's std over these answers {ours.std():.3f}")


if __name__ == "__main__":
    main()
