from zj_utils.corpus_stats import describe
from zj_utils.data import load_cmtmedqa


def _dialogue(*turns, dept="内科"):
    msgs = []
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return {"messages": msgs, "meta": {"cate1": dept}}


def test_inquiry_rate_counts_questions_in_non_final_doctor_turns():
    ds = [_dialogue(("头痛", "请问头痛多久了？"), ("三天", "建议休息。")),
          _dialogue(("咳嗽", "多喝水。"), ("好的", "不客气？")),  # last turn is not counted, question or not
          _dialogue(("你好", "你好！"), dept="外科")]
    s = describe(ds)
    assert s["non_final_doctor_turns"] == 2 and s["inquiry_rate"] == 0.5
    assert s["turns"] == [2, 2, 1] and s["departments"] == {"内科": 2, "外科": 1}
    assert s["user_chars"][:2] == [2, 2]


def test_real_cmtmedqa_test_set_has_proactive_doctors(data_dir):
    s = describe(load_cmtmedqa(data_dir / "cmtmedqa" / "CMtMedQA_test.json"))
    assert s["dialogues"] == 1144 and len(s["departments"]) == 17
    assert 0.0 < s["inquiry_rate"] < 1.0
