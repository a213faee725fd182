"""What a dialogue corpus looks like, for notebook 01: turns, lengths, departments, proactive inquiry."""
from __future__ import annotations

from collections import Counter

from .annotator import asks_question


def describe(dialogues: list[dict], tokenizer=None) -> dict:
    """Per-corpus distributions. `inquiry_rate` is the share of doctor turns that ask the patient a question,
    counting every doctor turn but the last of each dialogue (a last turn concludes or says goodbye)."""
    turns, user_chars, doctor_chars, user_tokens, doctor_tokens = [], [], [], [], []
    asked = inquiring = 0
    for d in dialogues:
        msgs = d["messages"]
        turns.append(sum(m["role"] == "user" for m in msgs))
        doctor = [m["content"] for m in msgs if m["role"] == "assistant"]
        user = [m["content"] for m in msgs if m["role"] == "user"]
        user_chars += [len(t) for t in user]
        doctor_chars += [len(t) for t in doctor]
        if tokenizer is not None:
            user_tokens += [len(x) for x in tokenizer(user, add_special_tokens=False)["input_ids"]] if user else []
            doctor_tokens += [len(x) for x in tokenizer(doctor, add_special_tokens=False)["input_ids"]] if doctor else []
        for t in doctor[:-1]:
            asked += 1
            inquiring += asks_question(t)
    departments = Counter(d.get("meta", {}).get("cate1") for d in dialogues if d.get("meta", {}).get("cate1"))
    return {"dialogues": len(dialogues), "turns": turns, "user_chars": user_chars, "doctor_chars": doctor_chars,
            "user_tokens": user_tokens, "doctor_tokens": doctor_tokens, "departments": dict(departments),
            "inquiry_rate": round(inquiring / asked, 4) if asked else None, "non_final_doctor_turns": asked}
