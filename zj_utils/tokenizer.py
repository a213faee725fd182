"""The tiny tokenizer: byte-level BPE trained with HF `tokenizers` on the world's text, plus the chat template.

Byte-level so that any text (the real CMtMedQA included) round-trips exactly; the chat template is the
paper's inference template `<human>:{query}\n<bot>:`, with `{% generation %}` markers around the doctor's
(assistant's) turns so that SFT can put its loss on those turns only.
"""
from __future__ import annotations

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


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a `PreTrainedTokenizerFast` with the chat template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, HUMAN, BOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[HUMAN, BOT], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast
