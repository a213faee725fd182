"""One builder of the reward model's input, four users: reward-model training (TRL's RewardTrainer), PPO's
score_responses, the GRPO/RLOO reward function and evaluation (score_conversations). With a ChatML template, whose
assistant turn ends `<|im_end|>\\n` while the policy stops at `<|im_end|>`, and with the project's tiny template,
whose turn ends with the EOS itself, all four must feed the model the same token ids and so read the score at the
same token, giving the same score."""
import string

import pytest
import torch

pytest.importorskip("trl")

from zj_utils.align import make_reward_fn
from zj_utils.ppo import Rollout, render_prompts, score_responses
from zj_utils.reward import preference_dataset, reward_text, score_conversations
from zj_utils.tokenizer import CHAT_TEMPLATE

CHARS = list(string.ascii_lowercase + string.digits + " :?.,\n")

CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _char_tokenizer(special: list[str], template: str, **tokens):
    """A character-level fast tokenizer built locally (no hub): every special token, then one id per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(special)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **tokens)
    hf.chat_template = template
    hf.padding_side = "right"
    return hf


def chatml_tokenizer():
    # as Qwen2.5's: no BOS, EOS = <|im_end|>, a pad token of its own
    return _char_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE,
                           eos_token="<|im_end|>", pad_token="<|endoftext|>",
                           additional_special_tokens=["<|im_start|>"])


def tiny_tokenizer():
    # the project's own template: BOS first, the EOS inside the assistant turn and nothing after it
    return _char_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<human>:", "<bot>:"], CHAT_TEMPLATE,
                           bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           additional_special_tokens=["<human>:", "<bot>:"])


def spy_reward_model(tok):
    """A tiny random LlamaForSequenceClassification that records every batch it is given."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    class Spy(LlamaForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, **kw):
            self.seen.append((input_ids.detach().cpu().clone(), attention_mask.detach().cpu().clone()))
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
    rm = Spy(cfg).eval()
    rm.seen = []
    return rm


def _rows(seen) -> list[list[int]]:
    """The unpadded ids of every row the model was given, in order, checking each batch is right-padded so the
    classifier pools (at the last non-pad id) on the last real token."""
    rows = []
    for ids, mask in seen:
        for r, m in zip(ids.tolist(), mask.tolist()):
            n = sum(m)
            assert m == [1] * n + [0] * (len(m) - n), "not right-padded"
            rows.append(r[:n])
    return rows


def _pooled_at(rm, ids: torch.Tensor) -> list[int]:
    """Where the sequence classifier reads the score: the rightmost id that is not the pad id."""
    non_pad = (ids != rm.config.pad_token_id).int()
    return (torch.arange(ids.shape[1]) * non_pad).argmax(-1).tolist()


CONVS = [[{"role": "user", "content": "i have a fever and a cough"}],
         [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "what is wrong?"},
          {"role": "user", "content": "my head hurts"}]]
CHOSEN = ["you may have a cold. rest and drink water.", "how long has it hurt?"]
REJECTED = ["no idea", "take drug x now"]


@pytest.mark.parametrize("make_tok,last_token", [(chatml_tokenizer, "\n"), (tiny_tokenizer, "</s>")],
                         ids=["chatml", "tiny"])
def test_four_paths_read_the_same_ids_and_score(tmp_path, make_tok, last_token):
    from trl import RewardConfig, RewardTrainer

    tok = make_tok()
    rm = spy_reward_model(tok)
    texts = [reward_text(tok, c, a) for c, a in zip(CONVS, CHOSEN)]
    if make_tok is chatml_tokenizer:
        assert texts[0].endswith("<|im_start|>assistant\n" + CHOSEN[0] + "<|im_end|>\n")
    else:
        assert texts[0] == "<s><human>:" + CONVS[0][0]["content"] + "\n<bot>:" + CHOSEN[0] + "</s>"
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(w[-1] == tok.convert_tokens_to_ids(last_token) for w in want)

    # 1. reward-model training: what RewardTrainer tokenises, collates and scores in compute_loss
    pairs = [{"prompt": c, "chosen": [{"role": "assistant", "content": a}],
              "rejected": [{"role": "assistant", "content": r}]} for c, a, r in zip(CONVS, CHOSEN, REJECTED)]
    args = RewardConfig(output_dir=str(tmp_path), max_length=None, report_to=[], per_device_train_batch_size=2,
                        remove_unused_columns=True, use_cpu=True, dataset_num_proc=None)
    trainer = RewardTrainer(model=rm, args=args, processing_class=tok, train_dataset=preference_dataset(tok, pairs))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    rm.seen.clear()
    with torch.no_grad():
        _, outputs = trainer.compute_loss(rm, dict(batch), return_outputs=True)
    trained_rows = _rows(rm.seen)[:len(pairs)]  # the chosen half of the batch
    trained_at = _pooled_at(rm, batch["input_ids"])[:len(pairs)]
    trained = outputs.logits[:len(pairs), 0].float()
    assert trained_rows == want
    assert trained_at == [len(w) - 1 for w in want]

    # 2. PPO: a rollout whose responses are the answers' tokens + EOS, then pad (prompts left-padded)
    pad = tok.pad_token_id
    q = [tok(t, add_special_tokens=False)["input_ids"] for t in render_prompts(tok, CONVS)]
    r = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in CHOSEN]
    P, R = max(map(len, q)), max(map(len, r))
    qi = torch.tensor([[pad] * (P - len(x)) + x for x in q])
    ri = torch.tensor([x + [pad] * (R - len(x)) for x in r])
    rm_mask = torch.tensor([[1] * len(x) + [0] * (R - len(x)) for x in r])
    ro = Rollout(qi, (qi != pad).long(), ri, rm_mask, torch.tensor([True, True]), render_prompts(tok, CONVS),
                 messages=CONVS)
    rm.seen.clear()
    ppo = score_responses(rm, tok, ro)
    assert _rows(rm.seen) == want
    assert _pooled_at(rm, rm.seen[0][0]) == trained_at

    # 3. GRPO/RLOO: TRL's reward function call, conversational prompts and completions
    rm.seen.clear()
    grpo = make_reward_fn(rm, tok)(prompts=CONVS, completions=[[{"role": "assistant", "content": a}] for a in CHOSEN],
                                   completion_ids=r)
    assert _rows(rm.seen) == want
    assert _pooled_at(rm, rm.seen[0][0]) == trained_at

    # 4. evaluation
    rm.seen.clear()
    evaluated = score_conversations(rm, tok, [c + [{"role": "assistant", "content": a}] for c, a in zip(CONVS, CHOSEN)])
    assert _rows(rm.seen) == want
    assert _pooled_at(rm, rm.seen[0][0]) == trained_at

    torch.testing.assert_close(ppo, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(grpo), trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(evaluated, trained, atol=1e-5, rtol=0)
    # and each equals the score of the sequence alone, unpadded
    with torch.no_grad():
        alone = torch.stack([rm(input_ids=torch.tensor([w]), attention_mask=torch.ones(1, len(w))).logits[0, 0]
                             for w in want])
    torch.testing.assert_close(evaluated, alone, atol=1e-5, rtol=0)


def test_ppo_scores_a_response_without_eos_as_its_closed_turn():
    """A response cut at max_new_tokens has no EOS: the reward model still reads the template's closed turn (the
    missing-EOS penalty, not the reward model, is what charges for the cut), as GRPO's decoded completion."""
    tok = chatml_tokenizer()
    rm = spy_reward_model(tok)
    q = tok(render_prompts(tok, CONVS[:1])[0], add_special_tokens=False)["input_ids"]
    r = tok("rest", add_special_tokens=False)["input_ids"]
    ro = Rollout(torch.tensor([q]), torch.ones(1, len(q), dtype=torch.long), torch.tensor([r]),
                 torch.ones(1, len(r), dtype=torch.long), torch.tensor([False]), [""], messages=CONVS[:1])
    score_responses(rm, tok, ro)
    assert tok.decode(_rows(rm.seen)[0]) == reward_text(tok, CONVS[0], "rest")


def test_preference_dataset_is_pre_tokenised():
    """TRL takes chosen_ids/rejected_ids as they are; given strings it would append an EOS to a ChatML text."""
    tok = chatml_tokenizer()
    ds = preference_dataset(tok, [{"prompt": CONVS[0], "chosen": [{"role": "assistant", "content": "a"}],
                                   "rejected": [{"role": "assistant", "content": "b"}]}])
    assert ds.column_names == ["chosen_ids", "rejected_ids"]
    assert tok.decode(ds[0]["chosen_ids"]).endswith("assistant\na<|im_end|>\n")
    with pytest.raises(ValueError, match="end with the assistant"):
        score_conversations(spy_reward_model(tok), tok, [CONVS[0]])
