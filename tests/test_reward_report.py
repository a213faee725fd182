"""The reward model's accuracy report on cases whose answer is known: hand-made scores over rankings of gold and
flawed answers, split by deciding dimension and flaw type; prompt-clustered intervals; the three-way split;
early stopping's bookkeeping."""
import numpy as np
import pytest

from zj_utils.common import ZJError
from zj_utils.reward import split_by_prompt, subsample_prompts
from zj_utils.reward_report import accuracy_report, clustered_accuracy, comparisons
from zj_utils.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(), 0)


def _ranked(world, sub, n=4):
    from zj_utils.annotator import rank_answers
    out = []
    for g in [g for g in world.gold if g["file"] == "rank_prompts.jsonl" and g["sub"] == sub][:n]:
        answers = [g["gold"], g["flawed"] or "请到医院就诊。", ""]
        out.append({"id": g["id"], "messages": [], "responses": answers,
                    "ranks": rank_answers(answers, g["expect"], world.kg)})
    return out


def test_report_counts_agreement_by_dimension_and_flaw(world):
    prompts = {p["id"]: p for p in world.rank_prompts}
    trap = _ranked(world, "contra_trap")    # gold > "可以，X是首选" (unsafe) ; "" has no errors
    red = _ranked(world, "red_flag")
    for r in trap + red:
        assert r["ranks"][0] == 1
    # a model that scores gold highest and the rest in reverse list order: it gets gold > x right, and the order
    # of the other two right only where the rule puts the flawed answer above the empty one
    scores = [[2.0, 0.0, 1.0] for _ in trap + red]
    rows = comparisons(trap + red, scores, prompts, world.kg)
    expected = sum(1 for r in trap + red for i in range(3) for j in range(3)
                   if r["ranks"][i] < r["ranks"][j] and r["responses"][i] != r["responses"][j])
    assert len(rows) == expected
    right = [row["correct"] for row in rows]
    gold_rows = [row for row, (r, i) in zip(rows, [(r, i) for r in trap + red for i in range(3) for j in range(3)
                                                  if r["ranks"][i] < r["ranks"][j]]) if i == 0]
    assert all(row["correct"] for row in gold_rows)
    rep = accuracy_report(rows)
    assert rep["overall"]["accuracy"] == round(sum(right) / len(right), 4)
    # the contraindication trap's flawed answer recommends the banned drug: decided by safety, flaw named
    trap_rows = [row for row in rows if row["kind"] == "contra_trap"]
    assert any(row["dimension"] == "safety" and row["flaw"] == "contraindicated_drug" for row in trap_rows)
    red_rows = [row for row in rows if row["kind"] == "red_flag"]
    assert any(row["flaw"] == "missed_red_flag" for row in red_rows)
    assert set(rep["by_kind"]) == {"contra_trap", "red_flag"}
    # a reward model that reverses every score is right exactly where this one is wrong
    flipped = comparisons(trap + red, [[-x for x in s] for s in scores], prompts, world.kg)
    assert [not r["correct"] for r in rows] == [r["correct"] for r in flipped]
    # a person's ranking may order two answers the rule scores alike: counted, under "rule_tie"
    same = [{"id": "tool-1", "messages": [], "responses": ["甲。", "乙。"], "ranks": [1, 2]}]
    tie = comparisons(same, [[1.0, 0.0]], prompts, world.kg)
    assert [(t["dimension"], t["gap"], t["correct"]) for t in tie] == [("rule_tie", "<0.1", True)]
    with pytest.raises(ValueError, match="3 answers but 2 scores"):
        comparisons(trap[:1], [[1.0, 0.0]], prompts, world.kg)


def test_clustered_interval_resamples_prompts():
    # 20 prompts with 1 comparison each, 15 right: the interval is a binomial-like one around 0.75
    rows = [{"prompt": f"p{i}", "correct": i < 15} for i in range(20)]
    a = clustered_accuracy(rows, n_boot=4000)
    assert a["accuracy"] == 0.75 and a["ci"][0] < 0.75 < a["ci"][1]
    assert 0.5 < a["ci"][0] < 0.62 and 0.88 < a["ci"][1] < 0.97
    # the same 20 outcomes on ONE prompt: nothing to resample, the interval collapses to the point
    one = clustered_accuracy([dict(r, prompt="p") for r in rows])
    assert one["ci"] == [0.75, 0.75]
    # coverage: over simulated data with a known rate, the 95% interval holds it about 95% of the time
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(200):
        sim = [{"prompt": f"p{i}", "correct": bool(rng.random() < 0.7)} for i in range(60)]
        lo, hi = clustered_accuracy(sim, n_boot=400, seed=k)["ci"]
        hits += lo <= 0.7 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_three_way_split_by_prompt_keeps_dev_and_groups_duplicates():
    rankings = [{"id": f"r{i:03d}", "messages": [{"role": "user", "content": f"q{i % 40}"}]} for i in range(100)]
    dev_only = split_by_prompt(rankings, 0.15, 0)
    dev, test = split_by_prompt(rankings, 0.15, 0, test_fraction=0.15)
    assert dev == dev_only and not dev & test and test
    text = lambda ids: {r["messages"][0]["content"] for r in rankings if r["id"] in ids}  # noqa: E731
    assert not text(dev) & text(test)
    rest = {r["id"] for r in rankings} - dev - test
    assert not text(rest) & (text(dev) | text(test))  # a prompt ranked twice lands on one side only
    assert len(text(dev)) == len(text(test)) == 6  # 15% of 40 distinct prompts


def test_best_on_dev_keeps_the_best_weights_and_stops(tmp_path):
    import torch
    from transformers import TrainerControl, TrainerState

    from zj_utils.training import BestOnDevCallback

    model = torch.nn.Linear(2, 1)
    cb = BestOnDevCallback(tmp_path / "best.safetensors", patience=2)
    state, control = TrainerState(), TrainerControl()
    for step, (acc, loss, w) in enumerate([(0.6, 0.7, 1.0), (0.8, 0.5, 2.0), (0.8, 0.6, 3.0), (0.7, 0.5, 4.0)]):
        state.global_step = step + 1
        with torch.no_grad():
            model.weight.fill_(w)
        cb.on_evaluate(None, state, control, metrics={"eval_accuracy": acc, "eval_loss": loss}, model=model)
        assert control.should_training_stop == (step == 3)
    best = cb.restore(model)
    assert best["step"] == 2 and torch.all(model.weight == 2.0)
    again = BestOnDevCallback(tmp_path / "best.safetensors", patience=2, resume_step=4)  # a resumed run
    assert again.best == cb.best and again.bad == 2 and again.history == cb.history
    # resumed from the checkpoint of step 2: the evaluations of steps 3 and 4 (made before the kill) are dropped,
    # so the re-run's evaluations of those steps are not counted twice, and patience restarts from step 2's best
    early = BestOnDevCallback(tmp_path / "best.safetensors", patience=2, resume_step=2)
    assert [h["step"] for h in early.history] == [1, 2] and early.best == (0.8, -0.5) and early.bad == 0
    assert [h["step"] for h in BestOnDevCallback(tmp_path / "best.safetensors", 2, resume_step=3).history] == [1, 2, 3]
    assert BestOnDevCallback(tmp_path / "best.safetensors", 2, resume_step=3).bad == 1
    assert BestOnDevCallback(tmp_path / "best.safetensors", patience=2).best is None  # a fresh run forgets it


def test_subsample_prompts_keeps_whole_prompts_a_seeded_share_of_them():
    pairs = [{"prompt_id": f"p{i}", "k": k} for i in range(20) for k in range(3)]  # 20 prompts x 3 pairs
    half = subsample_prompts(pairs, 0.5, seed=1)
    kept = {p["prompt_id"] for p in half}
    assert len(kept) == 10 and len(half) == 30  # every kept prompt with all three of its pairs
    assert half == [p for p in pairs if p["prompt_id"] in kept]  # in the original order
    assert half == subsample_prompts(pairs, 0.5, seed=1) and kept != {p["prompt_id"] for p in
                                                                      subsample_prompts(pairs, 0.5, seed=2)}
    assert len({p["prompt_id"] for p in subsample_prompts(pairs, 0.01, seed=1)}) == 1  # never none
    assert subsample_prompts(pairs, 1.0, seed=1) is pairs
    with pytest.raises(ZJError, match="train_fraction"):
        subsample_prompts(pairs, 0.0, seed=1)
