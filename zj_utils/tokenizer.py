"""The tiny tokenizer: a character BPE with byte fallback, trained with HF `tokenizers` on the world's text, plus
the chat template.

Every character of the training text is a token of its own (the alphabet), merges build on characters, and a
character outside the alphabet falls back to its UTF-8 bytes (`<0xE9>`...), as LLaMA's SentencePiece tokenizer
does. So any text (the real CMtMedQA included) round-trips exactly, and a model sampling from it cannot end a
token inside a character of the world: a byte-level BPE of 2,400 tokens over a world of ~800 distinct Chinese
characters could, and at temperature 1 most sampled answers held broken UTF-8 (U+FFFD). Pre-tokenisation is
GPT-2's split (letters, digits, punctuation, spaces apart), so "：" still ends a pre-token. The chat template is
the paper's inference template `<human>:{query}\n<bot>:`, with `{% generation %}` markers around the doctor's
(assistant's) turns so that SFT can put its loss on those turns only.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
HUMAN, BOT = "<human>:", "<bot>:"

# The end-of-turn token sits inside the generation block, so the model is trained to stop; nothing follows it,
# so a reward model trained on these strings reads its score at EOS, exactly where PPO's responses end.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}" + HUMAN + "{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}" + BOT +
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + BOT + "{% endif %}"
)


# GPT-2's pre-tokenisation pattern, applied to characters instead of bytes
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a character BPE with byte fallback on `texts`; returns a `PreTrainedTokenizerFast` with the chat
    template set. The vocabulary holds the special tokens, the 256 byte tokens, every character of `texts` and
    merges up to `vocab_size` (more when the alphabet alone is larger: no character of the world is left out)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    alphabet = sorted({c for t in texts for c in t})
    specials = [PAD, BOS, EOS, UNK, HUMAN, BOT]
    pre = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - len(BYTE_TOKENS), len(alphabet) + len(specials)),
                                  special_tokens=specials, initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # The byte tokens go into the model's own vocabulary (not added tokens), where byte fallback looks them up
    # and where skip_special_tokens leaves them alone.
    state = json.loads(tok.to_str())["model"]
    vocab = dict(state["vocab"])
    for b in BYTE_TOKENS:
        vocab.setdefault(b, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["merges"]]
    final = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True))
    final.pre_tokenizer = pre
    final.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    final.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=final, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[HUMAN, BOT], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def byte_fallback_ids(tokenizer) -> list[int]:
    """The ids of the 256 byte-fallback tokens (`<0x00>`...`<0xFF>`) of a tokenizer built by `train_tokenizer`."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[b] for b in BYTE_TOKENS if b in vocab)
