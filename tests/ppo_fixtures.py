"""Fixed rollouts for driving `ppo.ppo_step` without sampling: the same tokens every time, with padding whose
token ids can be chosen, so a test knows exactly which response positions are real. Shared by
tests/test_ppo_internals.py and the 2-process run in tests/test_distributed.py (not a test module itself)."""
import torch

from zj_utils.ppo import Rollout, render_prompts

# four prompts of equal token length (the char tokenizer of test_ppo: one token per character), so any share of
# them left-pads to the same width as the whole batch
PROMPTS = [[{"role": "user", "content": w}] for w in ("abcd", "efgh", "ijkl", "mnop")]
# responses without their EOS; lengths with EOS 4, 3, 2 (cut: no EOS), 5. Rows (0, 1) and (2, 3) hold 7 response
# tokens each, so a 2-way split gives each rank the same token count (see test_distributed's DDP check).
RESPONSES = ["abc", "de", "fg", "hijk"]
HAS_EOS = [True, True, False, True]


def fixed_rollout(tok, prompts=PROMPTS, responses=RESPONSES, has_eos=HAS_EOS, pad_fill=None, width=None) -> Rollout:
    """A Rollout as `generate_rollouts` would return it: left-padded prompts, responses cut after their first EOS
    and right-padded. `pad_fill` (a token id) replaces the pad id on the padded response positions."""
    pad, eos = tok.pad_token_id, tok.eos_token_id
    texts = render_prompts(tok, prompts)
    q = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    P = max(map(len, q))
    r = [tok(x, add_special_tokens=False)["input_ids"] + ([eos] if e else []) for x, e in zip(responses, has_eos)]
    R = width or max(map(len, r))
    fill = pad if pad_fill is None else pad_fill
    qi = torch.tensor([[pad] * (P - len(x)) + x for x in q])
    qm = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in q])
    ri = torch.tensor([x + [fill] * (R - len(x)) for x in r])
    rm = torch.tensor([[1] * len(x) + [0] * (R - len(x)) for x in r])
    return Rollout(qi, qm, ri, rm, torch.tensor(has_eos), texts, 0.0, messages=list(prompts))


def length_reward(prompts_text, texts):
    """A reward_fn with known values: 0.5 per response character, minus 1."""
    return [0.5 * len(t) - 1.0 for t in texts]


def use_rollout(monkeypatch, rollout):
    """Make ppo_step's rollout `rollout` (generate_rollouts is looked up at call time)."""
    import zj_utils.ppo as P

    monkeypatch.setattr(P, "generate_rollouts", lambda policy, tokenizer, prompts, cfg: rollout)


def sgd_update(rows, lr: float = 0.5, ppo_epochs: int = 2):
    """One ppo_step on the fixed rollout's `rows` (a list of row indices) with plain SGD and no gradient clipping,
    so an update is lr x the gradient itself (AdamW's first step is about lr x its sign: blind to a gradient
    summed where it should be averaged). Whitening is off: under DDP each rank whitens its own share. Returns the
    trainable parameters (LoRA + value head) flattened, before and after. Runs under torch.distributed when a
    process group is initialised (then each rank passes its own rows)."""
    import zj_utils.ppo as P
    from test_ppo import make_policy, make_tokenizer
    from zj_utils.ppo import PPOConfig
    from zj_utils.ppo_maths import KLController, ValueHead

    tok = make_tokenizer()
    policy, vh = make_policy(tok, seed=0), ValueHead(32)
    params = [p for p in policy.parameters() if p.requires_grad] + list(vh.parameters())
    flat = lambda: torch.cat([p.detach().flatten() for p in params]).clone()  # noqa: E731
    before = flat()
    ro = fixed_rollout(tok, [PROMPTS[i] for i in rows], [RESPONSES[i] for i in rows], [HAS_EOS[i] for i in rows],
                       width=max(len(r) for r in RESPONSES) + 1)
    cfg = PPOConfig(batch_size=len(rows), mini_batch_size=len(rows), ppo_epochs=ppo_epochs, kl_coef=0.05,
                    missing_eos_penalty=-1.0, whiten_advantages=False, max_grad_norm=1e9)
    real = P.generate_rollouts
    P.generate_rollouts = lambda policy, tokenizer, prompts, cfg: ro
    try:
        stats = P.ppo_step(policy, vh, torch.optim.SGD(params, lr=lr), tok, None, ro.messages, cfg,
                           KLController(cfg.kl_coef), torch.Generator().manual_seed(0), reward_fn=length_reward)
    finally:
        P.generate_rollouts = real
    assert stats["skipped_batches"] == 0, stats
    return before, flat()
