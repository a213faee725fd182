"""The seeded synthetic medical world: an invented knowledge graph and every data kind of the pipeline.

Every disease, drug, examination and exposure is an invented name built from uncommon syllables; every
text and every first user message starts with MARKER, so nothing here can pass for a fact about a real
disease or drug. Diseases come in look-alike pairs (same department, same symptoms) that only the key
question (a different exposure) tells apart: that is what makes proactive inquiry necessary.

Each part draws from its own `random.Random(f"{seed}:{part}")`, so the output is a pure function of
(config, seed) and a change to one part's size does not reshuffle the others. No set is ever iterated.

Three modules: the knowledge graph and its vocabulary (zj_utils/world_kg.py), how patients and doctors speak
about it (zj_utils/world_dialogue.py), and here every data kind built from both, `build_world`, and the files
(`write_world`, `load_world`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import rubric as R
from .config import WorldConfig
from .world_dialogue import _conclusion_expect, _dialogue, _msgs, _single, ask_key, conclude
from .world_kg import CONDITIONS, DEPARTMENTS, MARKER, _knowledge_graph

FLAWS = ("no_ask", "contra_drug", "no_emergency")
FILES = {"general": "general.jsonl", "pretrain_train": "pretrain_train.jsonl",
         "pretrain_heldout": "pretrain_heldout.jsonl", "sft_single": "sft_single.jsonl",
         "sft_multiturn": "sft_multiturn.json", "sft_nlp": "sft_nlp.jsonl", "sft_general": "sft_general.jsonl",
         "sft_safety": "sft_safety.jsonl", "rank_prompts": "rank_prompts.jsonl",
         "test_multiturn": "test_multiturn.jsonl", "test_single": "test_single.jsonl",
         "test_safety": "test_safety.jsonl", "probes": "probes.jsonl", "gold": "gold.jsonl"}


@dataclass
class World:
    kg: dict
    general: list = field(default_factory=list)
    pretrain_train: list = field(default_factory=list)
    pretrain_heldout: list = field(default_factory=list)
    sft_single: list = field(default_factory=list)
    sft_multiturn: list = field(default_factory=list)
    sft_nlp: list = field(default_factory=list)
    sft_general: list = field(default_factory=list)
    sft_safety: list = field(default_factory=list)
    rank_prompts: list = field(default_factory=list)
    test_multiturn: list = field(default_factory=list)
    test_single: list = field(default_factory=list)
    test_safety: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    # one entry per judged answer: {id, file, turn, sub, expect, gold, flawed, flaw}; for SFT records `flawed`
    # is the answer the record really holds when it carries a flaw, for prompts a flawed alternative
    gold: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# data kinds

GENERAL_SLOTS = {
    "city": ["北京", "上海", "广州", "成都", "杭州", "西安", "南京", "武汉", "长沙", "昆明"],
    "weather": ["晴", "多云", "小雨", "阴", "大风", "小雪", "雷阵雨"],
    "advice": ["出门记得带伞", "适合去公园散步", "注意添衣保暖", "适合晾晒衣服", "开车注意安全"],
    "who": ["小明", "小红", "王老师", "李阿姨", "张叔叔", "我的同学", "奶奶", "哥哥"],
    "dish": ["西红柿炒鸡蛋", "红烧肉", "饺子", "米饭", "面条", "青菜豆腐汤", "包子", "炒土豆丝"],
    "when": ["周末", "早上", "晚上", "中午", "节假日"],
    "place": ["海边", "山里", "古镇", "博物馆", "动物园", "草原", "湖边"],
    "sight": ["日出", "很多小鸟", "美丽的花", "古老的城墙", "清澈的河水", "满天的星星"],
    "subject": ["数学", "语文", "英语", "历史", "地理", "音乐", "美术"],
    "praise": ["进步很大", "上课很认真", "作业写得很工整", "回答问题很积极"],
    "way": ["坐地铁", "骑自行车", "坐公交车", "步行", "开车"],
    "season": ["春天", "夏天", "秋天", "冬天"],
    "thing": ["一本书", "一把伞", "一个苹果", "一杯茶", "一束花", "一张地图"],
}
GENERAL_TEMPLATES = [
    "{city}今天{weather}，气温{a}度，{advice}。", "天气预报说明天{city}{weather}，{advice}。",
    "{who}最喜欢吃{dish}，每个{when}都会做一次。", "今天中午我们吃了{dish}，味道很好。",
    "{season}的时候，我们一家去{place}旅行，看到了{sight}。", "{who}说{place}很漂亮，{when}想去看看{sight}。",
    "{who}在学校学习{subject}，老师说{who}{praise}。", "这学期我最喜欢{subject}课，因为老师讲得很有趣。",
    "{who}每天早上{b}点上班，{way}去公司。", "下班以后，{who}{way}回家，路上买了{thing}。",
    "早上好！今天是星期{wd}，祝你心情愉快。", "甲：你好，最近怎么样？乙：挺好的，谢谢关心。",
    "{a}加{b}等于{ab}，{a}乘{b}等于{axb}。", "桌子上有{a}个苹果，又放了{b}个，一共是{ab}个。",
    "{who}送给我{thing}，我说了声谢谢。", "一年有四个季节，{season}是我最喜欢的季节。",
]
WEEKDAYS = "一二三四五六日"


# A general (non-medical) knowledge graph of invented towns, rendered in the same three formats as the medical
# text (passage, triples, Q&A). The stand-in base model learns from it how facts about a named entity are stored
# and looked up, as a real base model has learned from the web, so that continued pre-training has to add only
# the new medical facts, not the skill of binding an attribute to a name.
TOWN_CHARS = "石桥溪川坪湾岭塘庄堡泉林河坝冈屯洲浦"
TOWN_ATTRS = {
    "region": ("地区", ["东部山区", "西部高原", "南部沿海", "北部平原", "中部盆地", "东北林区"]),
    "food": ("特产", ["茶叶", "柑橘", "米粉", "腊肉", "蜂蜜", "板栗", "豆腐干", "竹笋", "桂花糕", "酸菜"]),
    "sight": ("名胜", ["古塔", "瀑布", "石拱桥", "老戏台", "竹海", "溶洞", "古井", "梯田"]),
    "craft": ("手艺", ["剪纸", "竹编", "陶器", "刺绣", "木雕", "扎染", "风筝", "制伞"]),
    "month": ("节日月份", ["一月", "三月", "五月", "七月", "九月", "十一月"]),
}
TOWN_TEXTS = (
    ["{t}是{region}的一个小镇，最有名的特产是{food}。镇上的{sight}吸引了很多游客，当地人擅长{craft}，每年{month}举办庙会。",
     "{region}的{t}以{food}闻名。到了{t}，一定要看看{sight}。{t}的{craft}手艺代代相传，庙会在{month}。"],
    ["问：{t}在哪里？答：{region}。问：{t}有什么特产？答：{food}。问：{t}有什么名胜？答：{sight}。",
     "问：{t}的人擅长什么手艺？答：{craft}。问：{t}的庙会在几月？答：{month}。问：{t}的特产是什么？答：{food}。"],
)


def _towns(seed) -> list[dict]:
    rng = random.Random(f"{seed}:towns")
    names: list[str] = []
    while len(names) < 40:
        n = "".join(rng.sample(TOWN_CHARS, 2)) + "镇"
        if n not in names:
            names.append(n)
    return [{"name": n, **{k: rng.choice(v) for k, (_, v) in TOWN_ATTRS.items()}} for n in names]


def _town_text(rng, town) -> str:
    kind = rng.randrange(3)
    if kind == 2:
        return "".join(f"（{town['name']}，{label}，{town[k]}）" for k, (label, _) in TOWN_ATTRS.items())
    return rng.choice(TOWN_TEXTS[kind]).format(t=town["name"], **{k: town[k] for k in TOWN_ATTRS})


def _town_chat(rng, town) -> tuple[str, str]:
    k = rng.choice(list(TOWN_ATTRS))
    q = {"region": "{t}在哪里？", "food": "{t}有什么特产？", "sight": "去{t}玩，有什么名胜？",
         "craft": "{t}的人擅长什么手艺？", "month": "{t}的庙会在几月？"}[k].format(t=town["name"])
    return q, f"{town['name']}的{TOWN_ATTRS[k][0]}是{town[k]}。"


def _general(cfg, seed) -> list[dict]:
    """General text for the stand-in base model: daily life, facts about invented towns, and everyday chats in
    the paper's `<human>:…<bot>:` template (the paper's base, Ziya-LLaMA, had met that template before)."""
    from .tokenizer import BOT, HUMAN

    rng = random.Random(f"{seed}:general")
    towns = _towns(seed)
    out = []
    for i in range(cfg.n_general_texts):
        parts = []
        if rng.random() < cfg.general_chat_share:
            turns = [_town_chat(rng, rng.choice(towns)) if rng.random() < 0.5 else _general_chat(rng, 1 + i % 4)
                     for _ in range(rng.choice([1, 1, 2]))]
            # each turn but the last closes with EOS, as the chat template writes it; packing adds the last one
            text = "</s>".join(f"{HUMAN}{q}\n{BOT}{a}" for q, a in turns)
            out.append({"text": MARKER + text})
            continue
        if rng.random() < cfg.general_fact_share:
            parts.append(_town_text(rng, rng.choice(towns)))
        else:
            for t in rng.sample(GENERAL_TEMPLATES, rng.choice([1, 2, 2, 3])):
                a, b = rng.randint(1, 30), rng.randint(1, 12)
                slots = {k: rng.choice(v) for k, v in GENERAL_SLOTS.items()}
                parts.append(t.format(a=a, b=b, ab=a + b, axb=a * b, wd=rng.choice(WEEKDAYS), **slots))
        out.append({"text": MARKER + "".join(parts)})
    return out


def _triples(d) -> list[tuple[str, str, str]]:
    t = [("所属科室", d["department"])] + [("临床表现", s) for s in d["symptoms"]] + [
        ("接触史", d["key_question"]["topic"]), ("确诊检查", d["exam"]), ("首选药物", d["drug"]),
        ("替代药物", d["alt_drug"]), ("用药禁忌", d["contraindication"]["condition"]), ("危险信号", d["red_flags"][0])]
    return [(d["name"], r, x) for r, x in t]


# training variants first, then held-out variants (used only by pretrain_heldout.jsonl)
PASSAGES = (
    ["{n}是一种{dep}疾病，主要表现为{sym}。患者发病前多有{topic}接触史。确诊依靠{exam}。治疗首选{drug}；{cond}禁用{drug}，"
     "可改用{alt}。出现{rf}时须立即急诊就医。",
     "{n}属于{dep}的常见病，典型症状有{sym}，与接触{topic}密切相关。临床上以{exam}明确诊断，{drug}为首选药物，{cond}患者不宜"
     "使用{drug}，应换用{alt}。若出现{rf}，提示病情危重。",
     "{dep}疾病{n}以{sym}为主要表现，需与症状相似的疾病鉴别，关键在于询问{topic}接触史。{exam}可确诊。首选{drug}治疗，{alt}"
     "用于{cond}等不能使用{drug}的患者。{rf}是危险信号。"],
    ["关于{n}：本病见于{dep}，病人常诉{sym}，病前往往接触过{topic}。诊断须做{exam}。药物方面，{drug}效果最好，但{cond}时应以"
     "{alt}替代。一旦出现{rf}，应尽快送急诊。",
     "{n}的患者通常在接触{topic}之后出现{sym}，由{dep}负责诊治。通过{exam}可以确认本病。常规给予{drug}；如患者{cond}，则改用"
     "{alt}。病程中出现{rf}属于急症。"])
TRIPLE_FORMATS = (["（{h}，{r}，{t}）", "{h}-{r}-{t}；"], ["[{h} | {r} | {t}]"])
QA = ([("问：{n}应该看哪个科？答：{dep}。", "问：{n}属于哪个科室的疾病？答：{n}属于{dep}。"),
       ("问：{n}有哪些症状？答：{sym}。", "问：{n}的典型表现是什么？答：{sym}。"),
       ("问：{n}和什么接触史有关？答：多与接触{topic}有关。",),
       ("问：怎样确诊{n}？答：做{exam}。", "问：{n}需要做什么检查？答：{exam}。"),
       ("问：{n}首选什么药？答：{drug}。", "问：治疗{n}用什么药？答：首选{drug}。"),
       ("问：{cond}的{n}患者能用{drug}吗？答：不能，{cond}禁用{drug}，可改用{alt}。",),
       ("问：{n}出现什么情况要急诊？答：出现{rf}时应立即急诊就医。",)],
      [("提问：{n}看什么科？回答：看{dep}。",), ("提问：{n}患者会有什么不适？回答：常见{sym}。",),
       ("提问：{n}的病因线索是什么？回答：接触过{topic}。",), ("提问：{n}靠什么检查确认？回答：{exam}。",),
       ("提问：{n}吃什么药好？回答：{drug}。",), ("提问：{n}合并{cond}怎么用药？回答：换成{alt}。",),
       ("提问：{n}什么时候必须去急诊？回答：出现{rf}时。",)])


def _pretrain_text(rng, d, kind: str, held: bool) -> str:
    h = int(held)
    slots = dict(n=d["name"], dep=d["department"], sym="、".join(d["symptoms"]), topic=d["key_question"]["topic"],
                 exam=d["exam"], drug=d["drug"], alt=d["alt_drug"], cond=d["contraindication"]["condition"],
                 rf=d["red_flags"][0])
    if kind == "passage":
        return MARKER + rng.choice(PASSAGES[h]).format(**slots)
    if kind == "triples":
        fmt = rng.choice(TRIPLE_FORMATS[h])
        return MARKER + "".join(fmt.format(h=a, r=b, t=c) for a, b, c in _triples(d))
    groups = rng.sample(QA[h], 3)
    return MARKER + "".join(rng.choice(g).format(**slots) for g in groups)


def _pretrain(cfg, seed, kg) -> tuple[list, list]:
    rng = random.Random(f"{seed}:pretrain")
    kinds = ("passage", "triples", "qa")
    train = [{"text": _pretrain_text(rng, d, kinds[i % 3], False), "kind": kinds[i % 3], "disease_id": d["id"]}
             for d in kg["diseases"] for i in range(cfg.passages_per_disease)]
    held = [{"text": _pretrain_text(rng, d, kinds[i % 3], True), "kind": kinds[i % 3], "disease_id": d["id"]}
            for d in kg["diseases"] for i in range(cfg.heldout_per_disease)]
    return train, held


def _noisy(rng, cfg, flawed) -> bool:
    return flawed is not None and rng.random() < cfg.sft_noise_rate


def _sft(cfg, seed, kg, gold) -> dict[str, list]:
    rng = random.Random(f"{seed}:sft")
    sft_d = [d for d in kg["diseases"] if d["split"] == "sft"]
    out = {"sft_single": [], "sft_multiturn": [], "sft_safety": [], "sft_nlp": [], "sft_general": []}
    subs = ("case", "no_info", "contra_case", "red_case", "drug_q", "exam_q", "about_q", "red_q")
    for di, d in enumerate(sft_d):
        for i in range(cfg.sft_single_per_disease):
            sub = subs[(di + i) % len(subs)]
            q, exp, g, flawed, flaw = _single(rng, kg, d, sub, held=False)
            noisy = _noisy(rng, cfg, flawed)
            rid = f"single-{len(out['sft_single']) + 1:05d}"
            out["sft_single"].append({"id": rid, "kind": "single", "disease_id": d["id"], "messages": _msgs(
                [], MARKER + q) + [{"role": "assistant", "content": flawed if noisy else g}]})
            gold.append({"id": rid, "file": FILES["sft_single"], "turn": 0, "sub": sub, "expect": exp, "gold": g,
                         "flawed": flawed if noisy else None, "flaw": flaw if noisy else None})
        for i in range(cfg.sft_safety_per_disease):
            sub = ("harmful", "contra_trap", "red_flag")[(di + i) % 3]
            q, exp, g, flawed, flaw = _single(rng, kg, d, sub, held=False)
            noisy = _noisy(rng, cfg, flawed)
            rid = f"safety-{len(out['sft_safety']) + 1:05d}"
            out["sft_safety"].append({"id": rid, "kind": "safety", "disease_id": d["id"], "messages": _msgs(
                [], MARKER + q) + [{"role": "assistant", "content": flawed if noisy else g}]})
            gold.append({"id": rid, "file": FILES["sft_safety"], "turn": 0, "sub": sub, "expect": exp, "gold": g,
                         "flawed": flawed if noisy else None, "flaw": flaw if noisy else None})
        for i in range(cfg.sft_multiturn_per_disease):
            contra, red = rng.random() < cfg.contra_rate, rng.random() < cfg.red_flag_rate
            turns = _dialogue(rng, kg, d, contra, red, held=False)
            applicable = ["no_ask"] + ["contra_drug"] * contra + ["no_emergency"] * red
            flaw = rng.choice(applicable) if rng.random() < cfg.sft_noise_rate else None
            rid = f"syn-{len(out['sft_multiturn']) + 1:05d}"
            entry = {"id": rid, "file": FILES["sft_multiturn"], "turn": 2, "sub": "dialogue",
                     "expect": _conclusion_expect(d, contra, red), "gold": turns[2][1], "flawed": None, "flaw": flaw}
            if flaw == "no_ask":  # concludes at once, then only answers the patient's follow-up
                premature = conclude(rng, d, None, False)
                follow = rng.choice(["好的，谢谢医生。还需要注意什么？", "明白了，平时要注意些什么？"])
                care = rng.choice(["注意休息，多喝水。", "按时用药，注意休息。"])
                turns = [[turns[0][0], premature], [follow, care + f"如出现{d['red_flags'][0]}，请"
                                                    f"{rng.choice(R.EMERGENCY_RENDER)}。"]]
                entry |= {"turn": 0, "expect": {"should_ask": d["key_question"]["topic"], "disease": d["name"]},
                          "gold": ask_key(rng, kg, d), "flawed": premature}
            elif flaw:
                turns[2][1] = conclude(rng, d, contra, red, flaw)
                entry["flawed"] = turns[2][1]
            *history, (last_u, last_a) = turns
            out["sft_multiturn"].append({"id": rid, "cate1": d["department"], "cate2": d["name"],
                                         "instruction": last_u, "input": "", "output": last_a,
                                         "history": [list(t) for t in history]})
            gold.append(entry)
    for i in range(cfg.n_sft_nlp):
        d = rng.choice(sft_d)
        q, a = _nlp_task(rng, d, i % 2 == 0)
        out["sft_nlp"].append({"id": f"nlp-{i + 1:05d}", "kind": "nlp", "disease_id": d["id"],
                               "messages": _msgs([[MARKER + q, a]])})
    for i in range(cfg.n_sft_general):
        q, a = _general_chat(rng, i)
        out["sft_general"].append({"id": f"general-{i + 1:05d}", "kind": "general", "disease_id": None,
                                   "messages": _msgs([[MARKER + q, a]])})
    return out


def _nlp_task(rng, d, entities: bool) -> tuple[str, str]:
    syms = rng.sample(d["symptoms"], 2)
    rel = [("临床表现", syms[0]), ("临床表现", syms[1])]
    parts = [f"{d['name']}患者常出现{syms[0]}和{syms[1]}"]
    if rng.random() < 0.7:
        parts.append(f"可做{d['exam']}确诊")
        rel.append(("确诊检查", d["exam"]))
    parts.append(f"治疗首选{d['drug']}")
    rel.append(("首选药物", d["drug"]))
    if rng.random() < 0.5:
        parts.append(f"{d['contraindication']['condition']}者改用{d['alt_drug']}")
        rel.append(("替代药物", d["alt_drug"]))
    passage = "，".join(parts) + "。"
    if entities:
        q = rng.choice(["请从下文中抽取疾病、症状、药物、检查实体：", "命名实体识别（疾病/症状/药物/检查）："]) + passage
        drugs = [x for r, x in rel if r in ("首选药物", "替代药物")]
        exams = [x for r, x in rel if r == "确诊检查"] or ["无"]
        return q, f"疾病：{d['name']}；症状：{'、'.join(syms)}；药物：{'、'.join(drugs)}；检查：{'、'.join(exams)}"
    q = rng.choice(["请从下文中抽取（头实体，关系，尾实体）三元组：", "关系抽取，按（头实体，关系，尾实体）输出："]) + passage
    return q, "；".join(f"（{d['name']}，{r}，{x}）" for r, x in rel)


SELF_ID = "我是仲景（Zhongjing）复现项目的演示模型，只在一个虚构的医学世界里训练过，不能提供真实的医疗建议。"


def _general_chat(rng, i: int) -> tuple[str, str]:
    k = i % 5
    if k == 0:
        q = rng.choice(["你是谁？", "介绍一下你自己。", "你是真正的医生吗？", "你的回答可以当作真实的医疗建议吗？", "你是谁开发的？"])
        return q, SELF_ID + rng.choice(["", "身体不适请咨询真实的医生。"])
    if k == 1:
        return rng.choice(["你好！", "早上好。", "在吗？"]), "你好！" + SELF_ID + "请问有什么可以帮你？"
    if k == 2:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"
    s = GENERAL_SLOTS
    pool = [(f"{rng.choice(s['city'])}今天下雨，出门要带什么？", "下雨天出门记得带伞。"),
            ("推荐一道家常菜。", f"可以试试{rng.choice(s['dish'])}，做法简单，味道也好。"),
            ("周末去哪里玩好？", f"可以去{rng.choice(s['place'])}走走，放松一下心情。"),
            ("怎样提高学习效率？", "制定计划、专心听讲、按时休息，学习效率会更高。"),
            ("一年有几个季节？", "一年有春、夏、秋、冬四个季节。"), ("一周有几天？", "一周有七天。")]
    return rng.choice(pool)


def _prompt(rid, kind, d, messages, expect) -> dict:
    return {"id": rid, "kind": kind, "messages": messages, "disease_id": d["id"], "split": d["split"],
            "expect": expect}


def _prompts(cfg, seed, kg, gold, seen: set[str]) -> dict[str, list]:
    """Ranking prompts and test sets. `seen` holds every patient message the SFT data opens with: a test item
    never repeats one. With `cfg.heldout_test_phrasings` tests also use phrasings no training text uses. The
    ranking prompts and the test sets draw from their own generators, so the size of one leaves the other as it
    was."""
    test_held = cfg.heldout_test_phrasings
    out = {k: [] for k in ("rank_prompts", "test_multiturn", "test_single", "test_safety")}

    def add(file, prefix, kind, d, messages, exp, g, flawed, flaw, sub=None):
        rid = f"{prefix}-{len(out[file]) + 1:05d}"
        # a test item carries its gold answer as `reference`, for BLEU/ROUGE-L
        out[file].append(_prompt(rid, kind, d, messages, exp) | ({"reference": g} if file.startswith("test_") else {}))
        gold.append({"id": rid, "file": FILES[file], "turn": sum(m["role"] == "assistant" for m in messages),
                     "sub": sub or kind, "expect": exp, "gold": g, "flawed": flawed, "flaw": flaw})

    def single(rng, file, prefix, d, sub, held):
        for _ in range(100):  # a new test item, not a copy of a training prompt
            q, exp, g, flawed, flaw = _single(rng, kg, d, sub, held)
            if file == "rank_prompts" or MARKER + q not in seen:
                break
        kind = "multi_turn_open" if sub == "no_info" else sub
        add(file, prefix, kind, d, _msgs([], MARKER + q), exp, g, flawed, flaw, sub)

    def later_turn(rng, file, prefix, d, held):
        """The last turn of a consultation: the history already holds the answers, the doctor must conclude."""
        contra, red = rng.random() < cfg.contra_rate, rng.random() < cfg.red_flag_rate
        for _ in range(100):
            turns = _dialogue(rng, kg, d, contra, red, held=held)
            if file == "rank_prompts" or turns[0][0] not in seen:
                break
        flaw = "contra_drug" if contra else "no_emergency" if red else None
        add(file, prefix, "later_turn", d, _msgs(turns[:2], turns[2][0]), _conclusion_expect(d, contra, red),
            turns[2][1], conclude(rng, d, contra, red, flaw) if flaw else None, flaw)

    # Every prompt kind the tests hold is ranked too (single-turn questions and cases, multi-turn conclusions,
    # contraindication traps, red flags, harmful requests), in turn, on the diseases SFT shows.
    rank_rng = random.Random(f"{seed}:rank_prompts")
    rank_subs = ("no_info", "case", "contra_case", "red_flag", "contra_trap", "harmful", "later_turn", "red_case",
                 "drug_q", "exam_q")
    for di, d in enumerate(kg["diseases"]):
        if d["split"] == "sft":
            for i in range(cfg.rank_prompts_per_disease):
                sub = rank_subs[(di + i) % len(rank_subs)]
                if sub == "later_turn":
                    later_turn(rank_rng, "rank_prompts", "rank", d, held=False)
                else:
                    single(rank_rng, "rank_prompts", "rank", d, sub, held=False)
    rng = random.Random(f"{seed}:tests")
    for di, d in enumerate(kg["diseases"]):
        for i in range(cfg.test_per_disease):
            if (di + i) % 2 == 0:  # first turn: the key information is missing, the doctor must ask
                single(rng, "test_multiturn", "tmt", d, "no_info", held=test_held)
            else:
                later_turn(rng, "test_multiturn", "tmt", d, held=test_held)
            single(rng, "test_single", "tsg", d, ("case", "drug_q", "exam_q")[(di + i) % 3], held=test_held)
            single(rng, "test_safety", "tsf", d, ("harmful", "contra_trap", "red_flag")[(di + i) % 3], held=test_held)
    return out


# Held-out cloze phrasings: no training text uses them, so a probe tests knowledge, not a memorised string.
# Each ends in "：" so that the answer starts a new pre-token and is scored on its own tokens.
PROBES = {"department": "{n}的就诊科室：", "exam": "{n}的确诊检查：", "drug": "{n}的一线用药：",
          "alt_drug": "{n}的替代用药：", "contraindication": "{n}的用药禁忌：", "red_flag": "{n}需要急诊的危险信号：",
          "exposure": "{n}的关键接触史："}


def _probe_value(d, attr) -> str:
    if attr == "contraindication":
        return d["contraindication"]["condition"]
    if attr == "red_flag":
        return d["red_flags"][0]
    if attr == "exposure":
        return d["key_question"]["topic"]
    return d[attr]


def _probes(seed, kg, decoys) -> list[dict]:
    rng = random.Random(f"{seed}:probes")
    extra = {"department": list(DEPARTMENTS), "exam": decoys["exam"], "drug": decoys["drug"],
             "alt_drug": decoys["drug"], "contraindication": [c[0] for c in CONDITIONS],
             "red_flag": [f for _, fl in DEPARTMENTS.values() for f in fl], "exposure": decoys["exposure"]}
    out = []
    for d in kg["diseases"]:
        for attr, tpl in PROBES.items():
            right = _probe_value(d, attr)
            others = []
            for v in [_probe_value(o, attr) for o in kg["diseases"] if o["id"] != d["id"]] + extra[attr]:
                if v != right and v not in others:
                    others.append(v)
            choices = rng.sample(others, 3) + [right]
            rng.shuffle(choices)
            out.append({"id": f"probe-{len(out) + 1:05d}", "disease_id": d["id"], "split": d["split"],
                        "attribute": attr, "prompt": MARKER + tpl.format(n=d["name"]), "choices": choices,
                        "answer": choices.index(right)})
    return out


# ----------------------------------------------------------------------------------------------------------
# public API

def build_world(cfg: WorldConfig | None = None, seed: int = 0) -> World:
    cfg = cfg or WorldConfig()
    kg, decoys = _knowledge_graph(cfg, seed)
    general = _general(cfg, seed)
    train, held = _pretrain(cfg, seed, kg)
    gold: list[dict] = []
    sft = _sft(cfg, seed, kg, gold)
    seen = {r["messages"][0]["content"] for kind in ("sft_single", "sft_safety") for r in sft[kind]} | {
        (r["history"][0][0] if r["history"] else r["instruction"]) for r in sft["sft_multiturn"]}
    prompts = _prompts(cfg, seed, kg, gold, seen)
    return World(kg=kg, general=general, pretrain_train=train, pretrain_heldout=held, probes=_probes(seed, kg, decoys),
                 gold=gold, **sft, **prompts)


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_world(world: World, out_dir) -> dict:
    """Write world.json and every data file of DESIGN.md (plus gold.jsonl); return record counts per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps(world.kg, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    counts = {"world.json": len(world.kg["diseases"])}
    for attr, name in FILES.items():
        recs = getattr(world, attr)
        if name.endswith(".json"):
            text = json.dumps(recs, ensure_ascii=False, indent=1) + "\n"
        else:
            text = "".join(_dumps(r) + "\n" for r in recs)
        (out / name).write_text(text, encoding="utf-8")
        counts[name] = len(recs)
    return counts


def load_world(out_dir) -> World:
    out = Path(out_dir)
    kg = json.loads((out / "world.json").read_text(encoding="utf-8"))
    parts = {}
    for attr, name in FILES.items():
        p = out / name
        if not p.exists():
            continue
        text = p.read_text(encoding="utf-8")
        parts[attr] = json.loads(text) if name.endswith(".json") else [json.loads(l) for l in text.splitlines() if l]
    return World(kg=kg, **parts)
