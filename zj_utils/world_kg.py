"""The synthetic world's knowledge graph: its invented vocabulary and the diseases built from it.

Every disease, drug, examination and exposure is an invented name built from uncommon syllables, and every text
and every first user message of the world starts with MARKER, so nothing can pass for a fact about a real disease
or drug. Diseases come in look-alike pairs (same department, same symptoms) that only the key question (a
different exposure) tells apart: that is what makes proactive inquiry necessary. The graph draws from its own
`random.Random(f"{seed}:kg")`; no set is ever iterated. zj_utils/world.py builds every data kind from it.
"""
from __future__ import annotations

import random

from .config import WorldConfig

MARKER = "［虚构］"

# Uncommon "poetic" characters: two of them + a fixed suffix make no real disease, drug or exam name.
STEM_CHARS = "岚砂珀芷苓霁璃漪翎蘅岫琮沅槿蔻麓筠珂汀鸢琬瑾澈莳笙绫榭棠汐瑶蓠苒荇淞澜濯砚笺黛琅璎绛靛枋楹莼葳蕤沄溆泠珞"
DISEASE_SUFFIX, DRUG_SUFFIX = "热症病", "宁素定泰"
EXAM_METHODS = ("荧光", "微粒", "光谱", "凝集", "晶格", "共振", "磁珠", "显色")
# department: (symptoms shared inside a look-alike pair, red flags)
DEPARTMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "呼吸科": (("发热", "咳嗽", "咳痰", "胸闷", "咽痛", "乏力"), ("呼吸困难", "咯血")),
    "消化科": (("腹痛", "腹泻", "恶心", "呕吐", "食欲不振", "腹胀"), ("呕血", "便血")),
    "皮肤科": (("皮疹", "瘙痒", "脱屑", "红斑", "水疱", "低热"), ("喉头水肿", "大面积皮肤剥脱")),
    "神经科": (("头痛", "头晕", "失眠", "肢体麻木", "耳鸣", "乏力"), ("意识模糊", "抽搐")),
    "心内科": (("心悸", "胸闷", "气短", "乏力", "下肢水肿", "多汗"), ("剧烈胸痛", "晕厥")),
    "肾内科": (("尿频", "尿痛", "腰痛", "眼睑水肿", "乏力", "口干"), ("无尿", "高热寒战")),
    "内分泌科": (("口渴", "多尿", "消瘦", "怕热", "手抖", "多汗"), ("严重脱水", "呼吸深快")),
    "眼科": (("眼红", "眼痛", "畏光", "流泪", "视物模糊", "眼痒"), ("视力骤降", "剧烈眼痛")),
}
# (condition, ask, yes, no)
CONDITIONS = (("孕期", "是否怀孕", "是的，我怀孕了", "没有怀孕"),
              ("哺乳期", "是否在哺乳期", "是的，我在哺乳期", "不在哺乳期"),
              ("肾功能不全", "肾功能是否正常", "我有肾功能不全", "肾功能正常"),
              ("肝功能不全", "肝功能是否正常", "我有肝功能不全", "肝功能正常"),
              ("消化道溃疡", "是否有消化道溃疡", "是的，我有消化道溃疡", "没有消化道溃疡"),
              ("哮喘", "是否有哮喘病史", "是的，我有哮喘", "没有哮喘"))
# exposure kind: (ask template, statement templates); the topic is an invented stem + the kind
EXPOSURES = {"螺": ("最近是否吃过{t}", ("上周吃过{t}", "前几天吃了一盘{t}")),
             "草": ("最近是否接触过{t}", ("上周在山上割过{t}", "前几天在院子里拔过{t}")),
             "藻": ("最近是否接触过{t}", ("前些天在池塘里捞过{t}",)),
             "雀": ("最近是否接触过{t}", ("家里最近养了几只{t}",)),
             "果": ("最近是否吃过{t}", ("最近常吃{t}",)),
             "菇": ("最近是否吃过{t}", ("上周采过{t}煮汤喝",)),
             "虫": ("最近是否被{t}叮咬过", ("上周在野外被{t}叮过",)),
             "石": ("最近是否接触过{t}粉尘", ("上个月在工地打磨过{t}",))}


# ----------------------------------------------------------------------------------------------------------
# knowledge graph

def _knowledge_graph(cfg: WorldConfig, seed: int) -> tuple[dict, dict]:
    if cfg.n_diseases < 4 or cfg.n_diseases % 2:
        raise ValueError("n_diseases must be even and >= 4 (look-alike pairs)")
    rng = random.Random(f"{seed}:kg")
    stems: set[str] = set()  # membership only, never iterated

    def stem(avoid: str = "") -> str:
        # `avoid`: a disease's own name, so that none of its facts shares a character with it and a probe
        # cannot be answered by copying a character from the question
        while True:
            s = "".join(rng.sample(STEM_CHARS, 2))
            if s not in stems and s[::-1] not in stems and not set(s) & set(avoid):
                stems.add(s)
                return s

    n_pairs = cfg.n_diseases // 2
    depts = list(DEPARTMENTS)
    rng.shuffle(depts)
    depts = depts[:min(len(depts), (n_pairs + 1) // 2)]
    n_only = min(n_pairs - 1, max(1, round(n_pairs * cfg.pretrain_only_frac))) if cfg.pretrain_only_frac > 0 else 0
    only_pairs = rng.sample(range(n_pairs), n_only)
    exams_used: set[str] = set()
    used_syms: dict[str, list] = {d: [] for d in depts}
    diseases = []
    for p in range(n_pairs):
        dep = depts[p % len(depts)]
        pool, flags = DEPARTMENTS[dep]
        while True:  # pairs sharing a department must still differ in symptoms
            syms = rng.sample(pool, 3)
            if sorted(syms) not in used_syms[dep]:
                used_syms[dep].append(sorted(syms))
                break
        kinds = rng.sample(list(EXPOSURES), 2)
        flag_order = rng.sample(flags, 2)
        for k in range(2):
            name = stem() + rng.choice(DISEASE_SUFFIX)
            methods = rng.sample(EXAM_METHODS, len(EXAM_METHODS))
            eponym = stem(name)[0]
            exam = next((f"{eponym}氏{m}检测" for m in methods if f"{eponym}氏{m}检测" not in exams_used),
                        None) or f"{stem(name)[0]}氏{methods[0]}检测"
            exams_used.add(exam)
            topic = stem(name) + kinds[k]
            ask, facts = EXPOSURES[kinds[k]]
            cond = rng.choice(CONDITIONS)
            diseases.append({
                "id": f"D{2 * p + k:02d}", "name": name, "department": dep, "symptoms": list(syms),
                "key_question": {"topic": topic, "ask": ask.format(t=topic),
                                 "yes": "是的，" + rng.choice(facts).format(t=topic)},
                "exam": exam, "drug": stem(name) + rng.choice(DRUG_SUFFIX),
                "alt_drug": stem(name) + rng.choice(DRUG_SUFFIX),
                "contraindication": dict(zip(("condition", "ask", "yes", "no"), cond)),
                "red_flags": [flag_order[k]], "split": "pretrain_only" if p in only_pairs else "sft"})
    # decoy names of each invented type, for probe choices when the world itself has too few
    decoys = {"exam": [f"{stem()[0]}氏{rng.choice(EXAM_METHODS)}检测" for _ in range(3)],
              "drug": [stem() + rng.choice(DRUG_SUFFIX) for _ in range(6)],
              "exposure": [stem() + rng.choice(list(EXPOSURES)) for _ in range(3)]}
    decoys["exam"] = [e for e in decoys["exam"] if e not in exams_used]
    kg = {"seed": seed, "marker": MARKER, "departments": depts, "diseases": diseases}
    return kg, decoys


def partner(kg: dict, d: dict) -> dict:
    """The look-alike of `d`: same department and symptoms, told apart only by the key question."""
    return next(o for o in kg["diseases"] if o["id"] != d["id"] and o["department"] == d["department"]
                and sorted(o["symptoms"]) == sorted(d["symptoms"]))


def _pair(kg: dict, d: dict) -> tuple[dict, dict]:
    # a fixed order, so the doctor's question never reveals which of the two it is
    return tuple(sorted((d, partner(kg, d)), key=lambda x: x["id"]))


def all_names(kg: dict) -> list[str]:
    """Every invented name in the world (diseases, drugs, exams, exposure topics)."""
    out = []
    for d in kg["diseases"]:
        out += [d["name"], d["drug"], d["alt_drug"], d["exam"], d["key_question"]["topic"]]
    return out
