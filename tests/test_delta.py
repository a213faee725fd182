"""`zj delta apply` (zj_utils/delta.py) on two tiny random LLaMAs built here, and the check that stops a stage from
training on delta weights (the zhongjing-13b preset names Ziya-LLaMA-13B-v1, published only as a delta against
LLaMA-13B). All offline, CPU, seconds."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.delta import MARKER, apply_delta, check_not_delta, delta_reason
from zj_utils.presets import get_preset

WHOLE = ("model.embed_tokens.weight", "lm_head.weight")


def _llama(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms start at 1 in both: move them, as training would
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _make(tmp_path, base_vocab=64, target_vocab=80, dtype=torch.float32):
    """base/ (a 'LLaMA'), target model, delta/ made the way Ziya's was: differences, embeddings/LM head whole."""
    base, target = _llama(base_vocab, 0), _llama(target_vocab, 1)
    base.save_pretrained(tmp_path / "base")
    b, t = base.state_dict(), target.state_dict()
    delta = {n: (v.clone() if n in WHOLE else v - b[n]).to(dtype).contiguous() for n, v in t.items()}
    (tmp_path / "delta").mkdir()
    save_file(delta, str(tmp_path / "delta" / "model.safetensors"), metadata={"format": "pt"})
    target.config.save_pretrained(tmp_path / "delta")
    return b, delta, target


def test_base_plus_delta_is_the_target_exactly_with_an_enlarged_vocabulary(tmp_path):
    from transformers import LlamaForCausalLM

    b, delta, target = _make(tmp_path)
    rec = apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(out) == set(delta)
    for n, d in delta.items():
        want = d if n in WHOLE else b[n] + d  # Ziya: embeddings and LM head (80 rows, base 64) taken whole
        assert torch.equal(out[n], want), n
        assert torch.allclose(out[n], target.state_dict()[n], atol=1e-6), n
    assert out["model.embed_tokens.weight"].shape == (80, 16)
    assert rec["tensors"] == {"added": len(delta) - 2, "copied": 2, "dropped": 0}
    assert sorted(rec["copied_whole_from_delta"]) == sorted(WHOLE)
    assert json.loads((tmp_path / "out" / MARKER).read_text())["embeddings"] == "copy"
    # the folder is a model transformers loads, with the delta's (enlarged) config; it computes what the target does
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True)
    assert model.config.vocab_size == 80
    ids = torch.tensor([[1, 70, 5, 79, 2]])
    assert torch.allclose(model(ids).logits, target(ids).logits, atol=1e-4)


def test_fp16_delta_sharded_output_and_the_add_convention(tmp_path):
    from transformers import LlamaForCausalLM

    b, delta, _ = _make(tmp_path, dtype=torch.float16)
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out", shard_bytes=4096)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (tmp_path / "out" / "model.safetensors").exists()
    out = {}
    for f in files:
        out.update(load_file(str(tmp_path / "out" / f)))
    for n, d in delta.items():
        want = d if n in WHOLE else (b[n].float() + d.float()).half()  # summed in float32, rounded once
        assert out[n].dtype == torch.float16 and torch.equal(out[n], want), n
    LlamaForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True)
    # FastChat's convention: embeddings are differences too; the base is added on its 64 rows, the rest kept
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "add", embeddings="add", dtype="float32")
    emb = load_file(str(tmp_path / "add" / "model.safetensors"))["model.embed_tokens.weight"]
    d = delta["model.embed_tokens.weight"].float()
    assert torch.equal(emb[:64], b["model.embed_tokens.weight"] + d[:64]) and torch.equal(emb[64:], d[64:])


def test_a_pickle_delta_is_read_with_weights_only(tmp_path):
    b, delta, _ = _make(tmp_path)
    (tmp_path / "delta" / "model.safetensors").unlink()
    torch.save(delta, tmp_path / "delta" / "pytorch_model.bin")  # as Ziya publishes it
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(out[name], b[name] + delta[name])


def test_a_mismatched_shape_is_one_line_naming_the_tensor(tmp_path, capsys):
    _make(tmp_path)
    capsys.readouterr()  # transformers' progress bars while saving the fixtures
    name = "model.layers.0.self_attn.q_proj.weight"
    sd = load_file(str(tmp_path / "delta" / "model.safetensors"))
    sd[name] = torch.zeros(8, 16)
    save_file(sd, str(tmp_path / "delta" / "model.safetensors"))
    with pytest.raises(ZJError, match=rf"tensor {name}: base shape \(16, 16\) vs delta shape \(8, 16\)"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")
    rc = main(["delta", "apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"),
               "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err
    # a base that lacks the delta's tensors, and a hidden size that differs in the embeddings, say so too
    sd[name] = torch.zeros(16, 16)
    sd["model.embed_tokens.weight"] = torch.zeros(80, 8)
    save_file(sd, str(tmp_path / "delta" / "model.safetensors"))
    with pytest.raises(ZJError, match=r"tensor model\.embed_tokens\.weight: base shape \(64, 16\) vs delta shape \(80, 8\)"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out3")


def test_the_cli_writes_the_target_and_says_what_to_set(tmp_path, capsys):
    _make(tmp_path)
    assert main(["delta", "apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"),
                 "--out", str(tmp_path / "t")]) == 0
    assert f"--set model.name_or_path={tmp_path / 't'}" in capsys.readouterr().out
    assert main(["delta", "apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"),
                 "--out", str(tmp_path / "t")]) == 2  # never over an existing model
    assert "not empty" in capsys.readouterr().err


def _one_line_delta_error(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"model.name_or_path={name}" in err and "delta weights" in err
    assert "zj delta apply --base LLAMA13B_HF_DIR --delta DELTA_DIR --out TARGET_DIR" in err
    assert "--set model.name_or_path=TARGET_DIR" in err


def test_the_paper_preset_on_the_delta_repo_stops_every_stage_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = get_preset("zhongjing-13b").model.name_or_path
    assert name == "IDEA-CCNL/Ziya-LLaMA-13B-v1"  # the preset keeps naming the paper's model
    for stage in ("base", "pretrain", "sft", "rm", "ppo", "eval"):
        assert main([stage, "--preset", "zhongjing-13b", "--out", str(tmp_path / "run")]) == 2
        _one_line_delta_error(capsys.readouterr().err, name)
    # reproduce stops before the world is written
    assert main(["reproduce", "--preset", "zhongjing-13b", "--no-notebooks", "--out", str(tmp_path / "r")]) == 2
    _one_line_delta_error(capsys.readouterr().err, name)
    assert not (tmp_path / "r" / "world").exists()
    # the hub id in any case, and its HF-cache snapshot, are caught as well
    for other in ("idea-ccnl/ziya-llama-13b-v1", "/cache/hub/models--IDEA-CCNL--Ziya-LLaMA-13B-v1/snapshots/abc"):
        with pytest.raises(ZJError, match="published as delta weights against LLaMA-13B"):
            check_not_delta(get_preset("zhongjing-13b", [f"model.name_or_path={other}"]).model)


def test_local_folders_delta_model_and_rebuilt_target(tmp_path, capsys):
    _make(tmp_path)
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "target")
    capsys.readouterr()  # transformers' progress bars while saving the fixtures
    # the delta's final norm weights are differences (near 0): caught from the weights, whatever the folder is called
    assert "final norm weights" in delta_reason(str(tmp_path / "delta"))
    assert delta_reason(str(tmp_path / "base")) is None
    assert delta_reason(str(tmp_path / "target")) is None  # zj_delta.json: rebuilt by `zj delta apply`
    assert delta_reason("Qwen/Qwen2.5-0.5B-Instruct") is None and delta_reason("tiny") is None
    rc = main(["sft", "--preset", "zhongjing-13b", "--out", str(tmp_path / "run"),
               "--set", f"model.name_or_path={tmp_path / 'delta'}"])
    assert rc == 2
    _one_line_delta_error(capsys.readouterr().err, str(tmp_path / "delta"))
    # a family whose norms the weights cannot tell (or in between): the model card's apply_delta step decides
    card = tmp_path / "card"
    card.mkdir()
    (card / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    (card / "README.md").write_text("Step 2: python3 -m apply_delta --base llama-13b --delta this")
    assert "model card" in delta_reason(str(card))
