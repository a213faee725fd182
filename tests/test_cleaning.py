"""Cleaning: normalisation, personal-data scrubbing, length filters, exact and near duplicates, the report."""
from pathlib import Path

from zj_utils.cleaning import clean, normalize_text, scrub_pii


def _d(i, *texts):
    roles = ["user", "assistant"] * len(texts)
    return {"id": str(i), "source": "t", "kind": "multi_turn", "meta": {},
            "messages": [{"role": r, "content": t} for r, t in zip(roles, texts)]}


def test_normalize_text():
    assert normalize_text("\ufeff  我咳嗽　三天，体温３８．５℃ \r\n\r\n\r\n\r\nＣＴ正常\u200b  ") == "我咳嗽 三天，体温38．5℃\n\nCT正常"
    assert normalize_text("［虚构］岚砂热。") == "［虚构］岚砂热。"  # Chinese punctuation and brackets stay
    assert normalize_text("ａｂｃ＠ｑｑ．ｃｏｍ") == "abc@qq．com"


def test_scrub_pii():
    from collections import Counter
    counts = Counter()
    text = ("我的手机13812345678，座机010-62345678，+86 139-1234-5678，身份证110105199003071234，"
            "邮箱 zhang.san@163.com。血压130/80，血糖6.1，编号2023120112345678901，金额12345678901.5")
    out = scrub_pii(text, counts)
    assert out == ("我的手机<PHONE>，座机<PHONE>，<PHONE>，身份证<ID_CARD>，邮箱 <EMAIL>。血压130/80，血糖6.1，"
                   "编号2023120112345678901，金额12345678901.5")
    assert counts == {"phone": 3, "id_card": 1, "email": 1}
    assert scrub_pii("身份证11010519900307123X。") == "身份证<ID_CARD>。"


def test_clean_counts_every_record():
    base = "医生您好，我最近三天一直头痛，晚上更严重，吃了止痛药也不见好，需要做什么检查吗？"
    answer = "您好，头痛三天且夜间加重，建议先测量血压，必要时做头颅CT检查，请问有没有发热或呕吐？"
    ds = [_d(0, base, answer),
          _d(1, base + "  ", answer),                       # exact duplicate after normalisation
          _d(2, base.replace("三天", "四天"), answer),       # near duplicate
          _d(3, "嗯", "好"),                                 # too short
          _d(4, "   ", "好"),                                # empty after normalisation
          _d(5, "我的电话是13812345678，" + "胃痛" * 10, "请来门诊。" * 5),
          _d(6, "皮肤瘙痒一周，" * 3, "可能是湿疹，" * 3)]
    kept, report = clean(ds, min_chars=5, max_chars=500)
    assert [d["id"] for d in kept] == ["0", "5", "6"]
    assert report.as_dict()["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1, "too_short": 1,
                                           "empty_message": 1}
    assert report.n_in == 7 == report.n_kept + sum(report.dropped.values())
    assert report.pii == {"phone": 1} and "<PHONE>" in kept[1]["messages"][0]["content"]
    assert ds[5]["messages"][0]["content"].startswith("我的电话是138")  # the input is not modified
    assert "in: 7" in str(report) and "kept: 3" in str(report)
    kept, report = clean(ds, min_chars=5, max_chars=50, dedup=False)
    assert report.dropped["too_long"] >= 1 and "exact_duplicate" not in report.dropped


def test_clean_real_test_set(data_dir):
    from zj_utils.data import load_cmtmedqa
    d = load_cmtmedqa(Path(data_dir) / "cmtmedqa" / "CMtMedQA_test.json")
    kept, report = clean(d)
    assert report.n_in == 1144 and report.dropped["exact_duplicate"] >= 1  # repeated safety prompts
    assert len(kept) == report.n_kept
