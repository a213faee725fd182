"""The memory estimator's arithmetic on hand-computed cases, its activation count against autograd's own saved
tensors on a real (tiny) nf4 + LoRA model, the CLI, and the launch configs."""
import json
import tempfile
from pathlib import Path

import pytest
import torch

from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.config import LoraSpec
from zj_utils.estimate import (GIB, Bytes, ModelShape, act_bytes, estimate, layer_activation_bytes, lora_params,
                               lora_targets, model_shape, nf4_bytes, shape_from_config)
from zj_utils.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelShape("small", vocab_size=100, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                   num_kv_heads=2)


def test_nf4_bytes_by_hand():
    n = 64 * 256 * 4  # 65536 weights: 1024 blocks of 64, 4 groups of 256 blocks
    assert nf4_bytes(n, double_quant=True) == 32768 + 1024 * 1 + 4 * 4
    assert nf4_bytes(n, double_quant=False) == 32768 + 1024 * 4


def test_parameter_counts_by_hand():
    # per layer: q, k, v, o: 8x8; gate, up: 8x16; down: 16x8 -> 4*64 + 3*128 = 640; two layers
    assert SMALL.quantized_params() == 1280
    # embeddings and lm_head 100x8 each, 5 norms of 8
    assert SMALL.other_params() == 800 + 800 + 40
    assert SMALL.other_params(causal=False) == 800 + 40  # a reward model has a score head instead of lm_head
    # r=2: q, k, v, o: 2*(8+8) = 32 each; gate, up, down: 2*(8+16) = 48 each -> 272 per layer
    assert lora_params(SMALL, lora_targets(SMALL, "all-linear"), 2) == 544
    assert lora_params(SMALL, lora_targets(SMALL, ["q_proj", "v_proj"]), 2) == 128
    with pytest.raises(ZJError, match="lm_head"):
        lora_targets(SMALL, ["lm_head"])


def test_layer_activations_by_hand():
    fp32 = Bytes(stream=4, matmul=4, mask=4)
    targets = lora_targets(SMALL, "all-linear")
    # no dropout: 6h + 2kv + 4I + 7r floats, plus the fp32 log-sum-exp per head and two rsqrt
    assert layer_activation_bytes(SMALL, targets, 2, 0.0, fp32) == 4 * (48 + 16 + 64 + 14) + 4 * (2 + 2)
    # dropout: residuals 2h, gate/silu/up 3I, q/k/v/attention out 2h+2kv, + per LoRA branch a copy and a mask
    # of its input (q, k, v, o, gate, up: h each; down: I)
    expected = 4 * (16 + 48) + 4 * 32 + 16 + 4 * 14 + 8 * (6 * 8 + 16)
    assert layer_activation_bytes(SMALL, targets, 2, 0.05, fp32) == expected
    assert act_bytes("bfloat16", "gpu") == Bytes(stream=4, matmul=2, mask=1)


@pytest.mark.parametrize("dropout,targets", [(0.0, "all-linear"), (0.05, "all-linear"), (0.1, ["q_proj", "v_proj"])])
def test_layer_activations_equal_what_autograd_saves(dropout, targets):
    """The per-layer count is exact on CPU: bytes autograd keeps for backward in a 3-layer minus a 2-layer nf4
    model with LoRA, counted by storage through saved_tensors_hooks. On a GPU the model is there (nf4 loads to
    cuda:0) and the count is held to the estimator's GPU byte sizes (1-byte dropout masks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from zj_utils.common import load_model
    from zj_utils.config import ModelConfig, QuantConfig
    from zj_utils.training import prepare_qlora

    shape = ModelShape("t", 300, 128, 320, 3, 4, 4)
    saved = {}
    for layers in (2, 3):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=320,
                                         num_hidden_layers=layers, num_attention_heads=4,
                                         num_key_value_heads=4)).save_pretrained(d)
            model = prepare_qlora(load_model(d, ModelConfig(dtype="float32"), QuantConfig()),
                                  LoraSpec(r=4, alpha=8, dropout=dropout, target_modules=targets))
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                storages[st.data_ptr()] = st.nbytes()
            return t

        ids = torch.randint(0, 300, (2, 32)).to(model.device)  # nf4 goes to cuda:0 where there is a GPU
        kind = "gpu" if model.device.type == "cuda" else "cpu"
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids).loss.backward()
        saved[layers] = sum(storages.values())
    per_layer = (saved[3] - saved[2]) / 64
    tg = lora_targets(shape, targets)
    assert per_layer == layer_activation_bytes(shape, tg, 4, dropout, act_bytes("float32", kind))


def test_estimate_parts_and_fits():
    est = estimate(get_preset("tiny"), "sft", device="cpu")
    parts = {n: v for n, v, _ in est.parts}
    assert parts["AdamW states"] == 2 * parts["gradients"] == 2 * parts["LoRA weights"]
    assert est.total == pytest.approx(sum(parts.values()))
    assert all(est.fits().values())  # the tiny model fits anywhere
    gc = estimate(get_preset("tiny"), "sft", device="cpu", gradient_checkpointing=True)
    assert gc.total < est.total
    # 13B, 4 x 2048 tokens per micro-batch: checkpointing (the preset's sft.gradient_checkpointing) is what makes
    # SFT fit on an 80 GB card
    big = estimate(get_preset("zhongjing-13b"), "sft", gradient_checkpointing=False)
    big_gc = estimate(get_preset("zhongjing-13b"), "sft")
    assert big_gc.gradient_checkpointing and not big.fits()[80] and big_gc.fits()[80]
    assert {n: v for n, v, _ in big.parts}["base weights, nf4"] / GIB == pytest.approx(
        nf4_bytes(40 * (4 * 5120 ** 2 + 3 * 5120 * 13824)) / GIB)


def test_ppo_counts_one_policy_a_reward_model_and_the_largest_phase():
    est = estimate(get_preset("qwen2.5-0.5b"), "ppo")
    parts = {n: v for n, v, _ in est.parts}
    assert parts["reference model"] == 0
    assert parts["reward model (nf4, frozen)"] > 0
    phases = [n for n in parts if "KV cache" in n or "log-prob pass" in n or "PPO minibatch" in n]
    assert len(phases) == 3 and sum(parts[n] > 0 for n in phases) == 1
    smaller = estimate(get_preset("qwen2.5-0.5b", ["ppo.batch_size=8", "ppo.mini_batch_size=4"]), "ppo")
    assert smaller.total < est.total


def test_shapes_from_presets_config_json_and_errors(tmp_path):
    assert model_shape(get_preset("tiny")).hidden_size == get_preset("tiny").model.hidden_size
    assert model_shape(get_preset("qwen2.5-0.5b")).tie_embeddings
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1}))
    s = shape_from_config(tmp_path)
    assert (s.kv_dim, s.num_layers, s.tie_embeddings) == (4, 2, False)
    assert model_shape(get_preset("tiny", [f"model.name_or_path={tmp_path}"])).vocab_size == 10
    with pytest.raises(ZJError, match="unknown shape"):
        model_shape(get_preset("tiny", ["model.name_or_path=nobody/nothing"]))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(ZJError, match="hidden_size"):
        shape_from_config(tmp_path)


def test_cli_prints_table_and_json(capsys):
    assert main(["estimate", "--preset", "zhongjing-13b", "--stage", "sft", "--gradient-checkpointing"]) == 0
    out = capsys.readouterr().out
    assert "base weights, nf4" in out and "80 GB: fits" in out
    assert main(["estimate", "--preset", "tiny", "--stage", "rm", "--json", "--set", "rm.batch_size=2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stage"] == "rm" and data["fits"] == {"24GB": True, "40GB": True, "80GB": True}
    assert main(["estimate", "--preset", "tiny", "--stage", "sft", "--set", "sft.lora.target_modules=[\"x\"]"]) == 2


def test_launch_configs_parse_and_point_at_real_files():
    from accelerate.commands.config.config_args import load_config_from_file

    acc = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {p.stem for p in acc} >= {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    for p in acc:
        cfg = load_config_from_file(str(p))  # accelerate's own YAML loader: unknown keys fail here
        assert cfg.distributed_type.value == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(p.stem, "DEEPSPEED"), p
        assert cfg.num_processes >= 2
        ds = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
        if ds:
            stage = json.loads((ROOT / ds).read_text())["zero_optimization"]["stage"]  # a path from the repo root
            assert f"zero{stage}" in p.stem, p
    for p in (ROOT / "configs" / "deepspeed").glob("*.json"):
        assert json.loads(p.read_text())["zero_optimization"]["stage"] in (2, 3)
