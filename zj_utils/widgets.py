"""Human feedback inside JupyterLab: a ranking widget and a side-by-side chat widget (ipywidgets).

Each widget is two layers. The logic (what is ranked, what is saved, what each model said, what the judge
thinks) lives in plain classes that tests drive without a browser: :class:`RankingSession` and
:class:`ChatSession`. The views (:class:`RankingWidget`, :class:`ChatWidget`) only draw them and forward
clicks; ipywidgets is imported there and nowhere else.

The files (the candidates to rank, the save file rankings are appended to as they are made, and its reader
that ``zj rm --rankings FILE.jsonl`` uses) are zj_utils/ranking_store.py's; :meth:`RankingSession.export_tsv`
writes the ranking tool's TSV, which cannot express ties between different texts (see its docstring).
"""
from __future__ import annotations

import html
import json
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import rubric as R
from .common import ZJError
from .rankings import N_RESPONSES, write_ranking_input, write_ranking_output
from .ranking_store import RankingStore, load_candidates, normalize_ranks

# --------------------------------------------------------------------------------------------- the rule


def annotation_rule_lines() -> list[str]:
    """The annotation rule as the widget shows it, built from zj_utils/rubric.py (never copied)."""
    order = " > ".join(d.name for d in R.DIMENSIONS)
    lines = [f"Rank the {N_RESPONSES} answers, 1 = best. Equally good answers get the same rank (ties allowed).",
             f"Priority: {order}. A higher dimension decides; lower ones only break ties."]
    for i, d in enumerate(R.DIMENSIONS, 1):
        lines.append(f"{i}. {d.name}: {d.zh} ({d.en})")
        lines += [f"   - {a.zh}" for a in R.ABILITIES if a.dimension == d.name]
    return lines


def annotation_rule_html() -> str:
    head, prio = annotation_rule_lines()[:2]
    items = []
    for i, d in enumerate(R.DIMENSIONS, 1):
        abil = "".join(f"<li>{html.escape(a.zh)}</li>" for a in R.ABILITIES if a.dimension == d.name)
        items.append(f"<li><b>{html.escape(d.name)}</b>: {html.escape(d.zh)}<ul>{abil}</ul></li>")
    return (f"<div class='zj-rule'><b>Annotation rule</b><p>{html.escape(head)}</p><p>{html.escape(prio)}</p>"
            f"<ol>{''.join(items)}</ol></div>")


# --------------------------------------------------------------------------------------------- ranks


def pairwise_agreement(ranks_a: list[int], ranks_b: list[int]) -> dict:
    """How often two rankings of the same answers order a pair the same way (ties count as an order)."""
    n = len(ranks_a)
    same = total = 0
    for i in range(n):
        for j in range(i + 1, n):
            a = (ranks_a[i] > ranks_a[j]) - (ranks_a[i] < ranks_a[j])
            b = (ranks_b[i] > ranks_b[j]) - (ranks_b[i] < ranks_b[j])
            same += a == b
            total += 1
    return {"pairs": total, "same": same, "rate": round(same / total, 4) if total else None}


# --------------------------------------------------------------------------------------------- records


class RankingSession:
    """Which prompt is shown, the rankings made so far, and the exports; no widgets here."""

    def __init__(self, candidates: list[dict], save_path, annotator: str = "human"):
        if not candidates:
            raise ZJError("Nothing to rank: the candidates list is empty.")
        ids = [c["id"] for c in candidates]
        if len(set(ids)) != len(ids):
            raise ZJError("Candidates must have distinct ids.")
        self.candidates = candidates
        self.annotator = annotator
        self.store = RankingStore(save_path)
        self.index = self._next_unranked(0)

    @classmethod
    def from_file(cls, candidates_path, save_path, **kw) -> "RankingSession":
        return cls(load_candidates(candidates_path), save_path, **kw)

    @property
    def save_path(self) -> Path:
        return self.store.path

    def _next_unranked(self, start: int) -> int | None:
        n = len(self.candidates)
        for k in range(n):
            i = (start + k) % n
            if self.candidates[i]["id"] not in self.store.records:
                return i
        return None

    @property
    def current(self) -> dict | None:
        return None if self.index is None else self.candidates[self.index]

    @property
    def done(self) -> int:
        return sum(c["id"] in self.store.records for c in self.candidates)

    def saved_ranks(self, cid: str) -> list[int] | None:
        rec = self.store.records.get(cid)
        return None if rec is None else rec["ranks"]

    def rank(self, ranks) -> dict:
        """Save a ranking of the current prompt (ties allowed) and move to the next unranked one."""
        if self.current is None:
            raise ZJError("Every prompt is ranked; nothing is shown to rank.")
        c = self.current
        rec = {"id": c["id"], "messages": c["messages"], "responses": c["responses"],
               "ranks": normalize_ranks(ranks), "annotator": self.annotator,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.store.save(rec)
        if c.get("rule_ranks"):
            rec = rec | {"agreement_with_rule": pairwise_agreement(rec["ranks"], c["rule_ranks"])}
        self.index = self._next_unranked(self.index + 1)
        return rec

    def skip(self) -> None:
        if self.current is not None:
            nxt = self._next_unranked(self.index + 1)
            self.index = self.index if nxt is None else nxt

    def go(self, i: int) -> None:
        """Show prompt i (ranked or not): ranking it again replaces its saved ranking."""
        if not 0 <= i < len(self.candidates):
            raise ZJError(f"No prompt {i}: there are {len(self.candidates)}.")
        self.index = i

    def rankings(self) -> list[dict]:
        """Saved rankings in candidate order, in the reward stage's shape."""
        return [{k: self.store.records[c["id"]][k] for k in ("id", "messages", "responses", "ranks", "annotator")}
                for c in self.candidates if c["id"] in self.store.records]

    def export_tsv(self, path) -> dict:
        """The ranking tool's TSV (rank1 = best). The TSV has no way to say "tied" except identical texts, so
        tied answers with different texts come out ordered by their position; the count of such lost ties is
        returned and warned about. ``zj rm --rankings`` reads the widget's JSONL itself with its ties."""
        recs, lost = [], 0
        for r in self.rankings():
            order = sorted(range(len(r["ranks"])), key=lambda i: (r["ranks"][i], i))
            recs.append({"id": r["id"], "messages": r["messages"], "ranked": [r["responses"][i] for i in order]})
            lost += sum(r["ranks"][i] == r["ranks"][j] and r["responses"][i] != r["responses"][j]
                        for i in range(len(order)) for j in range(i + 1, len(order)))
        if not recs:
            raise ZJError("Nothing to export: no prompt is ranked yet.")
        write_ranking_output(path, recs)
        if lost:
            warnings.warn(f"{path}: {lost} tied pair(s) of different answers are written as ordered (the TSV cannot "
                          f"express ties); pass {self.save_path} to `zj rm --rankings` to keep them.", stacklevel=2)
        return {"rows": len(recs), "ties_not_expressible": lost, "path": str(path)}

    def export_input(self, path) -> dict:
        """The ranking tool's input JSON, for ranking the same answers in the tool."""
        write_ranking_input(path, self.candidates)
        return {"records": len(self.candidates), "path": str(path)}


def prepare_candidates(out, preset, n_prompts: int = 8, seed: int = 0, path=None) -> Path:
    """Sample 4 answers per ranking prompt from the SFT model, exactly as the reward stage does (its own
    sampling settings, rule annotator's ranks kept for comparison), into OUT/human/candidates.jsonl.
    Kept if it exists, so a restarted kernel shows the same answers it saved rankings for."""
    from .common import load_for_inference, load_tokenizer, read_json, require, world_dir
    from .data import load_jsonl, write_jsonl
    from .reward import sample_and_rank

    out = Path(out)
    path = Path(path) if path else out / "human" / "candidates.jsonl"
    if path.exists():
        return path
    sft = str(require(out / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    prompts = load_jsonl(world_dir(out) / "rank_prompts.jsonl")[:n_prompts]
    model = load_for_inference(sft, preset)
    tok = load_tokenizer(sft, preset.model.trust_remote_code)
    rankings = sample_and_rank(model, tok, prompts, read_json(world_dir(out) / "world.json"), preset.rm, seed)
    write_jsonl(path, rankings)
    return path


# --------------------------------------------------------------------------------------------- chat


@dataclass
class ChatModel:
    name: str
    model: object
    tokenizer: object


def load_chat_model(name: str, path, preset=None, base=None) -> ChatModel:
    """A model to chat with: a merged/full model folder, or a LoRA adapter folder (its base read from
    adapter_config.json unless ``base`` is given; the tokenizer from the base)."""
    from .common import load_for_inference, load_model, load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise ZJError(f"No model folder at {path}.")
    trust = bool(preset and preset.model.trust_remote_code)

    def _load(p):
        if preset is not None:
            return load_for_inference(str(p), preset)
        import torch
        from types import SimpleNamespace
        return load_model(str(p), SimpleNamespace(dtype="bfloat16" if torch.cuda.is_available() else "float32",
                                                  trust_remote_code=False))

    if (path / "adapter_config.json").exists():
        from peft import PeftModel
        base = Path(base or json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
        model = PeftModel.from_pretrained(_load(base), str(path))
        tok = load_tokenizer(str(base), trust)
    else:
        model, tok = _load(path), load_tokenizer(str(path), trust)
    model.eval()
    return ChatModel(name, model, tok)


def _stop_streamer(streamer) -> None:
    streamer.text_queue.put(streamer.stop_signal)


class ChatSession:
    """One patient, several doctors: each model keeps its own history (its own answers, the same patient
    turns), so a model that asks first and one that concludes at once can be told apart over turns."""

    def __init__(self, models: list[ChatModel], kg: dict | None = None, max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9, seed: int = 0):
        if not 1 <= len(models) <= 4:
            raise ZJError(f"Compare 1 to 4 models side by side, got {len(models)}.")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ZJError(f"Model names must differ: {names}")
        self.models = {m.name: m for m in models}
        self.kg = kg
        self.max_new_tokens, self.do_sample = max_new_tokens, do_sample
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.expect: dict = {}
        self.reset()

    def reset(self, expect: dict | None = None) -> None:
        self.histories: dict[str, list[dict]] = {n: [] for n in self.models}
        self.verdicts: dict[str, list] = {n: [] for n in self.models}
        self.expect = dict(expect or {})

    def start_case(self, item: dict) -> str:
        """A test case ({messages ending with the patient, expect}): a fresh chat judged against its
        expectations. Returns the patient's message to send; earlier turns become every model's history."""
        msgs = item["messages"]
        self.reset(item.get("expect"))
        for n in self.models:
            self.histories[n] = [dict(m) for m in msgs[:-1]]
        return msgs[-1]["content"]

    @property
    def turn(self) -> int:
        first = next(iter(self.histories.values()))
        return sum(m["role"] == "user" for m in first)

    def add_patient(self, text: str) -> None:
        text = (text or "").strip()
        if not text:
            raise ZJError("The patient's message is empty.")
        for h in self.histories.values():
            if h and h[-1]["role"] == "user":
                raise ZJError("Every model must answer the last message before the next one.")
            h.append({"role": "user", "content": text})

    def stream_reply(self, name: str):
        """Yield the model's answer piece by piece as it is generated (generation in a thread, a
        TextIteratorStreamer in between); when done the answer joins the history and is judged."""
        import torch
        from transformers import TextIteratorStreamer

        m, hist = self.models[name], self.histories[name]
        if not hist or hist[-1]["role"] != "user":
            raise ZJError(f"{name}: no patient message to answer.")
        tok = m.tokenizer
        prompt = tok.apply_chat_template(hist, add_generation_prompt=True, tokenize=False)
        dev = next(m.model.parameters()).device
        enc = tok(prompt, add_special_tokens=False, return_tensors="pt").to(dev)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, streamer=streamer,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        result: dict = {}

        def work():
            try:
                with torch.no_grad():
                    result["ids"] = m.model.generate(**enc, **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
                result["error"] = e
                _stop_streamer(streamer)

        expect = self.expect_now(name)
        torch.manual_seed(self.seed + self.turn)
        thread = threading.Thread(target=work, daemon=True, name=f"zj-chat-{name}")
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if "error" in result:
            raise result["error"]
        # The history holds the decoded ids, not the streamed pieces: the same text generate_chat would give.
        answer = tok.decode(result["ids"][0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        hist.append({"role": "assistant", "content": answer})
        self.verdicts[name].append(self.verdict(answer, expect))

    def reply(self, name: str) -> str:
        for _ in self.stream_reply(name):
            pass
        return self.histories[name][-1]["content"]

    def expect_now(self, name: str) -> dict:
        """What the judge checks in `name`'s next answer: the case's expectations, except that once the doctor
        has spoken (and the patient answered), the key question is no longer owed."""
        if any(m["role"] == "assistant" for m in self.histories[name]):
            return {k: v for k, v in self.expect.items() if k != "should_ask"}
        return dict(self.expect)

    def verdict(self, answer: str, expect: dict | None = None) -> dict:
        """The rule-based judge on one answer (needs the world's kg); free messages have no expectations, so
        only the checks that need none apply (fluency, refusals, template leaks)."""
        from .annotator import asks_question, assess

        v = {"asks_question": asks_question(answer)}
        if self.kg is None:
            return v | {"judged": False}
        expect = dict(self.expect if expect is None else expect)
        a = assess(answer, expect, self.kg)
        return v | {"judged": True, "safety": a.safety, "professionalism": a.professionalism,
                    "fluency": a.fluency, "unsafe": a.unsafe, "proactive": a.proactive, "refused": a.refused,
                    "reasons": list(a.reasons), "expect": expect}

    def snapshot(self) -> dict:
        return {n: (len(self.histories[n]), len(self.verdicts[n])) for n in self.models}

    def restore(self, snap: dict) -> None:
        """Undo a turn that failed half-way, so every model again has the same patient turns."""
        for n, (h, v) in snap.items():
            del self.histories[n][h:], self.verdicts[n][v:]

    def send(self, text: str) -> dict[str, str]:
        """The patient says `text`; every model answers in turn. Returns {model: answer}."""
        snap = self.snapshot()
        self.add_patient(text)
        try:
            return {n: self.reply(n) for n in self.models}
        except BaseException:
            self.restore(snap)
            raise


# --------------------------------------------------------------------------------------------- views


def _esc(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _dialogue_html(messages: list[dict]) -> str:
    who = {"user": "患者 patient", "assistant": "医生 doctor", "system": "system"}
    rows = [f"<div class='zj-turn zj-{m['role']}'><b>{who[m['role']]}:</b> {_esc(m['content'])}</div>"
            for m in messages]
    return "<div class='zj-dialogue'>" + "".join(rows) + "</div>"


def _verdict_html(v: dict | None) -> str:
    if not v:
        return ""
    asks = "asks the patient a question" if v["asks_question"] else "asks nothing"
    if not v.get("judged"):
        return f"<div class='zj-verdict'><i>{asks}</i> (no world: the rule judge needs OUT/world/world.json)</div>"
    flags = [f for f, on in (("UNSAFE", v["unsafe"]), ("proactive inquiry", v["proactive"]),
                             ("refused", v["refused"])) if on]
    scores = " · ".join(f"{d} {v[d]:.2f}" for d in R.DIMENSION_NAMES)
    reasons = "; ".join(v["reasons"]) or "no deductions"
    return (f"<div class='zj-verdict'><b>judge</b>: {scores}<br>{', '.join(flags) or 'safe'}; {asks}<br>"
            f"<small>{_esc(reasons)}</small></div>")


class RankingWidget:
    """The ranking view: dialogue, 4 answers each with a rank dropdown (ties allowed), the rule beside them."""

    def __init__(self, session: RankingSession):
        import ipywidgets as W

        self.session = session
        self.header = W.HTML()
        self.dialogue = W.HTML(layout=W.Layout(width="100%"))
        self.answers = [W.HTML(layout=W.Layout(width="100%")) for _ in range(N_RESPONSES)]
        opts = [("–", 0)] + [(str(k), k) for k in range(1, N_RESPONSES + 1)]
        self.selects = [W.Dropdown(options=opts, value=0, description=f"rank {chr(65 + i)}",
                                   layout=W.Layout(width="140px")) for i in range(N_RESPONSES)]
        self.save_btn = W.Button(description="Save ranking", button_style="primary", disabled=True,
                                 icon="check")
        self.skip_btn = W.Button(description="Skip")
        self.back_btn = W.Button(description="Previous")
        self.status = W.HTML()
        rows = []
        for i, (a, s) in enumerate(zip(self.answers, self.selects)):
            s.add_class(f"zj-rank-{i}")
            a.add_class(f"zj-answer-{i}")
            s.observe(self._changed, names="value")
            rows.append(W.HBox([s, a], layout=W.Layout(border="1px solid #ddd", padding="4px", margin="2px 0")))
        self.save_btn.add_class("zj-rank-save")
        self.skip_btn.add_class("zj-rank-skip")
        self.back_btn.add_class("zj-rank-back")
        self.status.add_class("zj-rank-status")
        self.header.add_class("zj-rank-header")
        self.save_btn.on_click(lambda _: self._save())
        self.skip_btn.on_click(lambda _: self._move(self.session.skip))
        self.back_btn.on_click(lambda _: self._back())
        rule = W.HTML(annotation_rule_html(), layout=W.Layout(width="34%", padding="0 0 0 12px"))
        left = W.VBox([self.dialogue, *rows, W.HBox([self.save_btn, self.skip_btn, self.back_btn]), self.status],
                      layout=W.Layout(width="66%"))
        self.view = W.VBox([self.header, W.HBox([left, rule])])
        self.view.add_class("zj-ranking")
        self._history: list[int] = []
        self._render()

    @classmethod
    def from_file(cls, candidates_path, save_path, **kw) -> "RankingWidget":
        return cls(RankingSession.from_file(candidates_path, save_path, **kw))

    def _repr_mimebundle_(self, **kw):
        return self.view._repr_mimebundle_(**kw)

    def _changed(self, _=None):
        self.save_btn.disabled = self.session.current is None or any(s.value == 0 for s in self.selects)

    def _render(self):
        s, c = self.session, self.session.current
        self.header.value = (f"<b>Ranked {s.done} of {len(s.candidates)}</b> · saved to <code>"
                             f"{html.escape(str(s.save_path))}</code>")
        if c is None:
            self.dialogue.value = "<p class='zj-all-done'><b>All prompts are ranked.</b></p>"
            for a, sel in zip(self.answers, self.selects):
                a.value, sel.value, sel.disabled = "", 0, True
        else:
            self.dialogue.value = f"<p>Prompt <code>{html.escape(c['id'])}</code></p>" + _dialogue_html(c["messages"])
            prev = s.saved_ranks(c["id"])
            for i, (a, sel) in enumerate(zip(self.answers, self.selects)):
                a.value = f"<div class='zj-answer'><b>{chr(65 + i)}.</b> {_esc(c['responses'][i])}</div>"
                sel.disabled = False
                sel.value = prev[i] if prev else 0
        self._changed()

    def _move(self, fn):
        if self.session.index is not None:
            self._history.append(self.session.index)
        fn()
        self._render()

    def _back(self):
        if self._history:
            self.session.go(self._history.pop())
            self._render()

    def _save(self):
        before = self.session.index
        try:
            rec = self.session.rank([s.value for s in self.selects])
        except ZJError as e:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return
        self._history.append(before)
        order = " ".join(f"{chr(65 + i)}={r}" for i, r in enumerate(rec["ranks"]))
        msg = f"Saved <code>{html.escape(rec['id'])}</code>: {order}."
        if "agreement_with_rule" in rec:
            ag = rec["agreement_with_rule"]
            rule = self.session.candidates[before]["rule_ranks"]
            msg += (f" The rule annotator ranked {' '.join(f'{chr(65 + i)}={r}' for i, r in enumerate(rule))}"
                    f" (same order on {ag['same']} of {ag['pairs']} pairs).")
        self.status.value = f"<span class='zj-saved'>{msg}</span>"
        self._render()


class ChatWidget:
    """The side-by-side view: one message box, one column per model streaming its answer, the judge below."""

    def __init__(self, session: ChatSession, cases: list[dict] | None = None):
        import ipywidgets as W

        self.session = session
        self.cases = {c["id"]: c for c in (cases or [])}
        self.case = W.Dropdown(options=[("free chat (no expectations)", "")] +
                               [(f"{c['id']} · {c['messages'][-1]['content'][:30]}", c["id"]) for c in cases or []],
                               value="", description="case", layout=W.Layout(width="60%"))
        self.box = W.Textarea(placeholder="患者的话 · the patient's message", layout=W.Layout(width="60%",
                                                                                         height="60px"))
        self.send_btn = W.Button(description="Send", button_style="primary", icon="paper-plane")
        self.reset_btn = W.Button(description="Reset", icon="refresh")
        self.status = W.HTML()
        self.columns = {n: W.HTML(layout=W.Layout(width="100%")) for n in session.models}
        self.judged = {n: W.HTML() for n in session.models}
        self.box.add_class("zj-chat-input")
        self.send_btn.add_class("zj-chat-send")
        self.reset_btn.add_class("zj-chat-reset")
        self.case.add_class("zj-chat-case")
        self.status.add_class("zj-chat-status")
        cols = []
        for i, n in enumerate(session.models):
            self.columns[n].add_class(f"zj-chat-col-{i}")
            self.judged[n].add_class(f"zj-chat-verdict-{i}")
            cols.append(W.VBox([W.HTML(f"<h4>{html.escape(n)}</h4>"), self.columns[n], self.judged[n]],
                               layout=W.Layout(width=f"{100 // len(session.models) - 1}%", border="1px solid #ddd",
                                               padding="4px")))
        self.send_btn.on_click(lambda _: self._send())
        self.reset_btn.on_click(lambda _: self._reset())
        self.case.observe(self._pick_case, names="value")
        self.view = W.VBox([self.case, W.HBox([self.box, self.send_btn, self.reset_btn]), self.status,
                            W.HBox(cols)])
        self.view.add_class("zj-chat")
        self._render()

    def _repr_mimebundle_(self, **kw):
        return self.view._repr_mimebundle_(**kw)

    def _render(self, streaming: dict | None = None):
        for n, col in self.columns.items():
            msgs = self.session.histories[n] + ([{"role": "assistant", "content": streaming[n]}]
                                                if streaming and n in streaming else [])
            col.value = _dialogue_html(msgs) if msgs else "<i>no messages yet</i>"
            self.judged[n].value = _verdict_html(self.session.verdicts[n][-1] if self.session.verdicts[n] else None)

    def _pick_case(self, change):
        item = self.cases.get(change["new"])
        if item:
            self.box.value = self.session.start_case(item)
        else:
            self.session.reset()
        self._render()

    def _reset(self):
        if self.case.value:  # the same case from its start
            self.box.value = self.session.start_case(self.cases[self.case.value])
        else:
            self.session.reset()
            self.box.value = ""
        self.status.value = "<span class='zj-chat-reset-done'>New conversation.</span>"
        self._render()

    def _send(self):
        text = self.box.value
        snap = self.session.snapshot()
        try:
            self.session.add_patient(text)
        except ZJError as e:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return
        self.box.value = ""
        self.send_btn.disabled = True
        try:
            for n in self.session.models:
                self.status.value = f"<i>{html.escape(n)} is answering…</i>"
                partial = ""
                for piece in self.session.stream_reply(n):
                    partial += piece
                    self._render({n: partial})
                self._render()
            self.status.value = f"<span class='zj-chat-done'>Turn {self.session.turn} answered.</span>"
        except Exception as e:  # shown in the widget: a callback's exception would only reach the log
            self.session.restore(snap)
            self.box.value = text
            self._render()
            self.status.value = f"<span style='color:#b00'>{html.escape(f'{type(e).__name__}: {e}')}</span>"
        finally:
            self.send_btn.disabled = False
