"""Kill and resume, for every stage that trains or judges: a stage run in a subprocess is killed with SIGKILL at a
random point after its first complete checkpoint (picked with a seeded RNG by watching the checkpoint folder), then
`zj <stage> --resume` finishes it, and its metrics.json must be byte for byte the one of an uninterrupted run with
the same preset and seed. No tolerance is needed: the checkpoint holds everything the rest of the run depends on
(weights, optimizer, scheduler, every RNG, the per-step losses), and metrics.json holds no wall-clock value.

The uninterrupted runs are one smoke pipeline built once for the module; each stage's killed run starts from a copy
of the stages before it. `zj judge` with the OpenAI-compatible judge is killed while its verdicts stream in from a
local stub server, one call at a time and with 4 in flight, and resumes from its verdict cache without asking for a
cached verdict again."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stub_chat_api import StubChatAPI, verdict_reply
from zj_utils.api_judge import OpenAIChatJudge
from zj_utils.cli import main
from zj_utils.pipeline import STAGES, run_stage
from zj_utils.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
PRESET = "smoke"
SEED = 0
KILL_TIMEOUT_S = 420


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here, in this process and in the killed subprocesses, uses one thread: the same arithmetic in
    all of them, and on a shared 2-core machine much faster than threads fighting over the cores."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZJ_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread):
    """The uninterrupted smoke pipeline: the shared prefix of every killed run, and the reference metrics."""
    out = tmp_path_factory.mktemp("straight")
    preset = get_preset(PRESET)
    for stage in STAGES:
        run_stage(stage, preset, out, SEED)
    return out


def _prefix(straight: Path, out: Path, stage: str) -> None:
    for before in STAGES[:STAGES.index(stage)]:
        shutil.copytree(straight / before, out / before)


def _kill_when(cmd, trigger, rng: random.Random, cwd=None, env=None, max_delay: float = 0.05) -> str | None:
    """Start `cmd`, wait until `trigger()` holds, then SIGKILL it after a random delay (which may land in the middle
    of writing the next checkpoint). Returns None when it was killed, else why not (the run ended first)."""
    with open(Path(cwd) / "killed_run.log" if cwd else os.devnull, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while not trigger():
                if proc.poll() is not None:
                    return f"the run ended (rc {proc.returncode}) before the kill point"
                assert time.monotonic() < deadline, "the kill point never came"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, max_delay))
            if proc.poll() is not None:
                return "the run ended during the random delay before the kill"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return None


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")


def _save_points(steps: int, every: int) -> list[int]:
    """Steps at which the Trainer writes a checkpoint: every `every` steps, and the last one."""
    return sorted(set(range(every, steps + 1, every)) | {steps})


def _trigger(stage: str, d: Path, rng: random.Random, reference: dict):
    """A condition on the stage folder that holds only after the first complete checkpoint, at a random step."""
    preset = get_preset(PRESET)
    if stage in ("pretrain", "sft", "rm"):
        points = _save_points(reference["steps"], getattr(preset, stage).save_every)
        assert len(points) >= 2, f"{stage}: the smoke preset must checkpoint at least twice"
        k = rng.choice(points[1:])  # checkpoint-k appears once the first checkpoint is complete
        return (lambda: (d / "checkpoints" / f"checkpoint-{k}").exists()), f"checkpoint-{k} started"
    if stage == "ppo":
        k = rng.randint(1, preset.ppo.steps - 1)
        return (lambda: (d / "latest.json").exists() and json.loads((d / "latest.json").read_text())["step"] >= k), \
            f"PPO checkpoint of step {k} written"
    if stage == "eval":
        name = rng.choice(list(reference["models"])[:-1])
        return (lambda: (d / "done" / f"{name}.json").exists()), f"model {name} evaluated"
    raise AssertionError(stage)


def _plant_torso(stage: str, d: Path) -> None:
    """What a kill in the middle of a save leaves behind; a resumed run must never take it as complete."""
    if stage in ("pretrain", "sft", "rm"):
        torso = d / "checkpoints" / "checkpoint-999"
        torso.mkdir(parents=True)
        (torso / "trainer_state.json").write_text('{"global_step": 999, "log_hist', encoding="utf-8")
        (torso / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    elif stage == "ppo":
        (d / ".checkpoint-000099.tmp").mkdir()
        (d / ".checkpoint-000099.tmp" / "state.json").write_text("{", encoding="utf-8")
    elif stage == "eval":
        (d / "answers").mkdir(exist_ok=True)
        (d / "answers" / "ppo.jsonl").write_text('{"id": "x", "answer": "half', encoding="utf-8")


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rm", "ppo", "eval"])
def test_killed_stage_resumes_to_the_same_metrics(straight, tmp_path, stage):
    rng = random.Random(f"resume-{stage}")
    reference = json.loads((straight / stage / "metrics.json").read_text())
    # The smoke stages are fast: on an idle machine a run can reach its end between the kill point and the kill
    # (the last steps, probes and merge take well under a second). Such an attempt proves nothing, so it is
    # started again with a new kill point, up to 3 times; the check below is never relaxed.
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        _prefix(straight, out, stage)
        d = out / stage
        trigger, what = _trigger(stage, d, rng, reference)
        cmd = [sys.executable, "-m", "zj_utils.cli", stage, "--preset", PRESET, "--out", str(out), "--seed",
               str(SEED)]
        missed = _kill_when(cmd, trigger, rng, cwd=str(tmp_path), env=_env())
        if missed is None and not (d / "metrics.json").exists():
            break
    assert missed is None and not (d / "metrics.json").exists(), \
        f"{stage} finished before the kill, 3 times ({what}; {missed or 'metrics.json written'})"
    _plant_torso(stage, d)

    assert main([stage, "--preset", PRESET, "--out", str(out), "--seed", str(SEED), "--resume"]) == 0

    timings = json.loads((d / "timings.json").read_text())
    if stage in ("pretrain", "sft", "rm"):
        assert timings["resumed_from_step"] > 0, f"{stage} started over instead of resuming ({what})"
        assert not (d / "checkpoints" / "checkpoint-999").exists()
        # the log reads as one run: one line per step, none twice
        steps = [r["step"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]
        assert steps == list(range(1, reference["steps"] + 1))
    if stage == "rm":
        assert timings["sampling_read_back"], "the answers were sampled again"
    if stage == "eval":
        assert timings["models_read_back"], "every model was evaluated again"
    if stage == "ppo":
        rows = [json.loads(x) for x in (d / "ppo_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, get_preset(PRESET).ppo.steps + 1))
    assert (d / "metrics.json").read_bytes() == (straight / stage / "metrics.json").read_bytes(), what


def test_resume_refuses_other_settings(straight, tmp_path, capsys):
    """Resuming under other settings would mix two runs in one folder: a one-line error instead."""
    out = tmp_path / "run"
    _prefix(straight, out, "pretrain")
    shutil.copytree(straight / "pretrain", out / "pretrain")
    assert main(["pretrain", "--preset", PRESET, "--out", str(out), "--resume", "--set", "pretrain.learning_rate=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Cannot resume" in err and "pretrain" in err


# --------------------------------------------------------------------------- zj judge (OpenAI-compatible)

class SlowJudgeAPI(StubChatAPI):
    """A chat-completions server on loopback that answers every request after `delay` s with a verdict that
    depends on the request only, so a judge run can be killed while its verdicts stream in. It keeps the cache key
    of every request it answered, in order."""

    def __init__(self, delay: float = 0.05):
        self.requests, self.delay, self.keys, lock = 0, delay, [], threading.Lock()

        def respond(body, request):
            with lock:
                self.requests += 1
            time.sleep(self.delay)
            winner = "AB"[sum(json.dumps(body, sort_keys=True).encode()) % 2]
            with lock:
                self.keys.append(OpenAIChatJudge.cache_key(body))
            return 200, verdict_reply(winner, "平局", "A")

        super().__init__(respond)


N_ITEMS = 10


def _judge_inputs(d: Path) -> list[str]:
    d.mkdir(parents=True)
    items = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"［虚构］我发热第{i}天了，怎么办？"}], "expect": {}}
             for i in range(N_ITEMS)]
    (d / "tests.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    for name in "ab":
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"id": x["id"], "answer": f"{name}{i}"}) + "\n"
                                                 for i, x in enumerate(items)), encoding="utf-8")
    return ["judge", "a.jsonl", "b.jsonl", "--tests", "tests.jsonl", "--judge", "openai", "--model", "stub-judge",
            "--out", "result.json", "--cache", "cache.jsonl", "--n-boot", "200"]


def _complete_keys(cache: Path) -> set:
    keys = set()
    for line in cache.read_bytes().splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError):
            pass
    return keys


@pytest.mark.parametrize("concurrency", [1, 4])
def test_killed_judge_resumes_from_its_cache(tmp_path, monkeypatch, concurrency):
    """The uninterrupted run is serial; the killed run and its re-run have `concurrency` calls in flight. The stub
    answers more slowly for more workers, so that the kill lands with calls left to make."""
    rng = random.Random("resume-judge" if concurrency == 1 else f"resume-judge-{concurrency}")
    api = SlowJudgeAPI()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", api.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-resume-test")
        args = _judge_inputs(tmp_path / "straight")
        monkeypatch.chdir(tmp_path / "straight")
        assert main(args) == 0
        straight = json.loads(Path("result.json").read_text())

        run = tmp_path / "killed"
        _judge_inputs(run)
        conc = ["--concurrency", str(concurrency)]
        api.delay = 0.05 * concurrency
        k = rng.randint(1, 2 * N_ITEMS - 2 * concurrency)  # verdicts cached before the kill (two orders per item)
        cache = run / "cache.jsonl"
        n_before = api.requests
        missed = _kill_when([sys.executable, "-m", "zj_utils.cli", *args, *conc],
                            lambda: cache.exists() and len(cache.read_bytes().splitlines()) >= k, rng, cwd=str(run),
                            env=dict(_env(), OPENAI_BASE_URL=api.url, OPENAI_API_KEY="sk-resume-test"),
                            max_delay=0.1)
        assert missed is None, missed  # the stub answers slowly: the judge cannot finish before the kill
        assert not (run / "result.json").exists()
        cached = len(cache.read_bytes().splitlines())
        paid_before_kill = _complete_keys(cache)
        time.sleep(api.delay + 0.1)  # the calls the killed run left in flight reach the stub's log
        n_killed = api.requests - n_before
        monkeypatch.chdir(run)
        api.delay = 0.01
        assert main(args + conc) == 0
        resumed = json.loads((run / "result.json").read_text())
        rerun_keys = api.keys[n_before + n_killed:]
    finally:
        api.close()

    # what this invocation did differs (it paid for fewer requests); every verdict and number is the same
    ops = ("http_requests", "http_retries", "cache_hits", "cache_bad_lines")
    st_s, st_r = straight.pop("judge_stats"), resumed.pop("judge_stats")
    assert resumed == straight and resumed["n_items"] == N_ITEMS
    assert {k: v for k, v in st_r.items() if k not in ops} == {k: v for k, v in st_s.items() if k not in ops}
    assert st_s["http_requests"] == 2 * N_ITEMS and st_s["cache_hits"] == 0
    # no verdict paid twice: a line cut short by the kill is the only one asked again
    assert st_r["cache_hits"] >= cached - 1 and st_r["cache_hits"] + st_r["http_requests"] == 2 * N_ITEMS
    # ... by request: the re-run asks for no verdict the killed run had cached, and for none twice; only the calls
    # the kill caught in flight (at most one per worker) were sent by both runs
    assert not paid_before_kill & set(rerun_keys) and len(set(rerun_keys)) == len(rerun_keys)
    assert len(paid_before_kill) + len(rerun_keys) == 2 * N_ITEMS
    assert n_killed - len(paid_before_kill) <= concurrency
