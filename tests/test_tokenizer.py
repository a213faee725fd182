from zj_utils.tokenizer import BOT, HUMAN, train_tokenizer

TEXTS = ["［虚构］岚砂热是一种虚构的呼吸科疾病，常见症状包括发热和咳嗽。", "今天天气很好，我们去公园散步吧。"] * 40


def test_round_trip_of_any_text_through_byte_fallback():
    tok = train_tokenizer(TEXTS, 400)
    for s in ["［虚构］岚砂热", "真实的病例文本，未见过的字：龘", "mixed 文本 123\n\t😀\r\n", " a  b "]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s and tok.decode(ids, skip_special_tokens=True) == s
    assert tok.unk_token_id not in tok("龘", add_special_tokens=False)["input_ids"]


def test_no_token_of_the_world_ends_inside_a_character():
    """Sampling cannot garble the world's text: every token but the 256 byte tokens decodes to whole characters,
    and every character of the training text is a token of its own."""
    tok = train_tokenizer(TEXTS, 400)
    for i in range(len(tok)):
        t = tok.convert_ids_to_tokens(i)
        if not (t.startswith("<0x") and len(t) == 6):
            assert "\ufffd" not in tok.decode([i]), t
    vocab = tok.get_vocab()
    assert all(c in vocab for t in TEXTS for c in t)
    rng = __import__("random").Random(0)
    words = [i for i in range(len(tok)) if not tok.convert_ids_to_tokens(i).startswith("<0x")]
    assert "\ufffd" not in tok.decode([rng.choice(words) for _ in range(500)])


def test_chat_template_is_the_papers_and_masks_doctor_turns_with_eos():
    tok = train_tokenizer(TEXTS, 400)
    msgs = [{"role": "user", "content": "发热"}, {"role": "assistant", "content": "请问"},
            {"role": "user", "content": "是的"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == f"<s>{HUMAN}发热\n{BOT}请问</s>{HUMAN}是的\n{BOT}"
    enc = tok.apply_chat_template(msgs[:2], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(trained) == "请问</s>"  # the doctor's words and the stop token, nothing of the patient's
