"""The synthetic world: determinism, the marker, the split, the record shapes, held-out phrasings, names."""
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from zj_utils.world import FILES, WorldConfig, build_world, load_world, write_world
from zj_utils.world_kg import MARKER, all_names, partner

SMALL = WorldConfig(n_diseases=8, passages_per_disease=3, n_general_texts=200, sft_single_per_disease=8,
                    sft_multiturn_per_disease=4, n_sft_nlp=16, n_sft_general=16, sft_safety_per_disease=3,
                    rank_prompts_per_disease=6, test_per_disease=2)
SFT_FILES = ["sft_single.jsonl", "sft_multiturn.json", "sft_nlp.jsonl", "sft_general.jsonl", "sft_safety.jsonl"]
TEST_FILES = ["test_multiturn.jsonl", "test_single.jsonl", "test_safety.jsonl"]


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(), 0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(build_world(SMALL, 0), d)
    return d


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_determinism(tmp_path, small_dir):
    write_world(build_world(SMALL, 0), tmp_path / "again")
    write_world(build_world(SMALL, 1), tmp_path / "other")
    assert _digest(tmp_path / "again") == _digest(small_dir)
    assert set(_digest(small_dir)) == {"world.json", *FILES.values()}
    other = _digest(tmp_path / "other")
    assert all(other[k] != v for k, v in _digest(small_dir).items())


def test_determinism_across_processes(tmp_path, small_dir):
    # string hashing is randomised per process: the output must not depend on it
    code = ("import sys; from zj_utils.world import *; "
            f"write_world(build_world(WorldConfig(**{asdict(SMALL)!r}), 0), sys.argv[1])")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[1])
    assert _digest(tmp_path) == _digest(small_dir)


def test_load_world_roundtrip(small_dir):
    w, back = build_world(SMALL, 0), load_world(small_dir)
    assert back.kg == w.kg
    for attr in FILES:
        assert getattr(back, attr) == getattr(w, attr), attr


def test_odd_disease_count_rejected():
    with pytest.raises(ValueError):
        build_world(WorldConfig(n_diseases=7), 0)


def _first_user(rec) -> str:
    if "history" in rec:
        return rec["history"][0][0] if rec["history"] else rec["instruction"]
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def test_marker_everywhere(world):
    for attr in ("general", "pretrain_train", "pretrain_heldout"):
        assert all(r["text"].startswith(MARKER) for r in getattr(world, attr)), attr
    for attr in ("sft_single", "sft_multiturn", "sft_nlp", "sft_general", "sft_safety", "rank_prompts",
                 "test_multiturn", "test_single", "test_safety"):
        assert all(_first_user(r).startswith(MARKER) for r in getattr(world, attr)), attr
    assert all(p["prompt"].startswith(MARKER) for p in world.probes)
    assert world.kg["marker"] == MARKER


def test_pretrain_only_split(small_dir):
    kg = json.loads((small_dir / "world.json").read_text(encoding="utf-8"))
    only = [d for d in kg["diseases"] if d["split"] == "pretrain_only"]
    assert only and len(only) < len(kg["diseases"])
    for d in only:
        assert partner(kg, d)["split"] == "pretrain_only"
        names = [d["name"], d["drug"], d["alt_drug"], d["exam"], d["key_question"]["topic"]]
        for f in SFT_FILES + ["rank_prompts.jsonl"]:
            text = (small_dir / f).read_text(encoding="utf-8")
            assert not any(n in text for n in names), (f, d["name"])
        for f in ["pretrain_train.jsonl", "pretrain_heldout.jsonl", "probes.jsonl"] + TEST_FILES:
            assert d["name"] in (small_dir / f).read_text(encoding="utf-8"), (f, d["name"])
    for f in TEST_FILES + ["probes.jsonl"]:
        recs = [json.loads(l) for l in (small_dir / f).read_text(encoding="utf-8").splitlines()]
        assert {r["split"] for r in recs} == {"sft", "pretrain_only"}
        split = {d["id"]: d["split"] for d in kg["diseases"]}
        assert all(r["split"] == split[r["disease_id"]] for r in recs)


def test_cmtmedqa_shape(world):
    ids = [r["id"] for r in world.sft_multiturn]
    assert len(set(ids)) == len(ids) and ids[0] == "syn-00001"
    for r in world.sft_multiturn:
        assert set(r) == {"id", "cate1", "cate2", "instruction", "input", "output", "history"}
        assert r["input"] == "" and r["cate1"] in world.kg["departments"]
        assert all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in r["history"])
        assert 1 <= len(r["history"]) <= 2
    gold = [r for r in world.sft_multiturn if len(r["history"]) == 2]
    assert all("？" in r["history"][0][1] for r in gold)  # the doctor asks first


def test_message_records(world):
    for attr in ("sft_single", "sft_nlp", "sft_general", "sft_safety"):
        for r in getattr(world, attr):
            assert set(r) == {"id", "kind", "messages", "disease_id"}
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    for attr in ("rank_prompts", "test_multiturn", "test_single", "test_safety"):
        for r in getattr(world, attr):
            extra = {"reference"} if attr.startswith("test_") else set()
            assert set(r) == {"id", "kind", "messages", "disease_id", "split", "expect"} | extra
            assert r["messages"][-1]["role"] == "user" and r["expect"]
    kinds = {r["kind"] for r in world.test_multiturn}
    assert kinds == {"multi_turn_open", "later_turn"}
    assert {r["kind"] for r in world.test_safety} == {"harmful", "contra_trap", "red_flag"}


def test_probes(world):
    attrs = {"department", "exam", "drug", "alt_drug", "contraindication", "red_flag", "exposure"}
    by_d = {}
    for p in world.probes:
        assert len(p["choices"]) == 4 and len(set(p["choices"])) == 4
        assert 0 <= p["answer"] < 4
        by_d.setdefault(p["disease_id"], set()).add(p["attribute"])
    assert all(v == attrs for v in by_d.values()) and len(by_d) == len(world.kg["diseases"])
    d = {x["id"]: x for x in world.kg["diseases"]}
    for p in world.probes:
        if p["attribute"] == "drug":
            assert p["choices"][p["answer"]] == d[p["disease_id"]]["drug"]


def test_heldout_phrasings(world):
    _check_heldout(build_world(WorldConfig(heldout_test_phrasings=True), 0), strict=True)
    _check_heldout(world, strict=False)


def _check_heldout(world, strict: bool):
    train = [r["text"] for r in world.pretrain_train] + [
        m["content"] for a in ("sft_single", "sft_nlp", "sft_safety", "sft_general") for r in getattr(world, a)
        for m in r["messages"]] + [x for r in world.sft_multiturn for h in r["history"] for x in h] + [
        x for r in world.sft_multiturn for x in (r["instruction"], r["output"])]
    blob = "\n".join(train)
    for p in world.probes:
        assert p["prompt"][len(MARKER):] not in blob
    if strict:  # no test phrasing occurs in training text at all
        for a in ("test_single", "test_safety"):
            for r in getattr(world, a):
                assert r["messages"][0]["content"][len(MARKER):] not in blob
    train_users = {m["content"] for a in ("sft_single", "sft_safety") for r in getattr(world, a)
                   for m in r["messages"] if m["role"] == "user"} | {_first_user(r) for r in world.sft_multiturn}
    for a in ("test_multiturn", "test_single", "test_safety"):
        for r in getattr(world, a):
            assert r["messages"][0]["content"] not in train_users
    assert not {r["text"] for r in world.pretrain_heldout} & {r["text"] for r in world.pretrain_train}


REAL_NAMES = ["登革热", "猩红热", "风湿热", "回归热", "产褥热", "抑郁症", "焦虑症", "糖尿病", "血友病", "阿莫西林", "青霉素",
              "红霉素", "四环素", "胰岛素", "干扰素", "维生素", "肝素", "奎宁", "安定", "地西泮", "布洛芬", "巴氏", "瑞氏"]


def test_names(world):
    names = all_names(world.kg)
    assert len(set(names)) == len(names)
    for a in names:
        assert not any(a != b and a in b for b in names), a
        assert not any(r in a for r in REAL_NAMES), a
        assert not any(m in a for m in ("霉素", "西林", "沙星", "唑", "胺", "酮", "洛", "芬")), a
    for d in world.kg["diseases"]:
        p = partner(world.kg, d)
        assert p["key_question"]["topic"] != d["key_question"]["topic"]
        same_dept = [o for o in world.kg["diseases"] if o["department"] == d["department"]]
        assert sum(sorted(o["symptoms"]) == sorted(d["symptoms"]) for o in same_dept) == 2


def test_noise_rate(world):
    flawed = [g for g in world.gold if g["file"] == "sft_multiturn.json" and g["flaw"]]
    rate = len(flawed) / len(world.sft_multiturn)
    assert 0.2 < rate < 0.4
    assert {g["flaw"] for g in world.gold if g["file"].startswith("sft") and g["flaw"]} == {
        "no_ask", "contra_drug", "no_emergency"}
    clean = build_world(WorldConfig(sft_noise_rate=0.0), 0)
    assert not any(g["flaw"] for g in clean.gold if g["file"].startswith("sft"))


# SHA-256 over SMALL's files (seed 0) with the test items' `reference` stripped, computed with the generator as it
# was before references existed. Adding them must not move anything else; a deliberate change to the world's
# generation changes this digest too (recompute it then, on purpose).
DIGEST_WITHOUT_REFERENCES = "cfe35610086e83d25187a7076397ed8670d15af224eed587541bf1ef73797a16"


def test_references(world, small_dir):
    h = hashlib.sha256()
    for p in sorted(small_dir.iterdir()):
        text = p.read_text(encoding="utf-8")
        if p.name in TEST_FILES:
            text = "".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "reference"},
                                      ensure_ascii=False) + "\n" for l in text.splitlines())
        h.update(p.name.encode() + b"\0" + text.encode() + b"\0")
    assert h.hexdigest() == DIGEST_WITHOUT_REFERENCES
    gold = {(g["file"], g["id"]): g for g in world.gold}
    for f in TEST_FILES:
        for r in getattr(world, f[:-len(".jsonl")]):
            assert isinstance(r["reference"], str) and r["reference"].strip(), (f, r["id"])
            assert r["reference"] == gold[f, r["id"]]["gold"]  # the ideal doctor's answer, as the judge knows it
    # the ideal doctor asks on an open first turn, refuses a harmful request, concludes otherwise
    opens = [r for r in world.test_multiturn if r["kind"] == "multi_turn_open"]
    assert opens and all(r["expect"]["should_ask"] in r["reference"] and "？" in r["reference"] for r in opens)
    assert all(r["expect"]["disease"] in r["reference"] for r in world.test_single)
