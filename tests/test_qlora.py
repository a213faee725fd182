"""QLoRA on CPU: nf4 weights with double quantisation, LoRA on top, gradients reaching every layer, also after
the model has been evaluated (a bitsandbytes repacking bug once cut them off silently)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from zj_utils.common import load_model
from zj_utils.config import LoraSpec, ModelConfig, QuantConfig
from zj_utils.training import prepare_qlora


def _tiny_checkpoint(tmp_path):
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    return str(tmp_path)


def test_nf4_double_quant_and_lora_gradients_reach_the_first_layer_after_an_eval_pass(tmp_path):
    import bitsandbytes as bnb

    model = load_model(_tiny_checkpoint(tmp_path), ModelConfig(), QuantConfig())
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4" and q_proj.weight.quant_state.nested  # double quant
    x = torch.randint(0, 128, (2, 16)).to(model.device)  # nf4 goes to cuda:0 where there is a GPU
    model.eval()
    with torch.no_grad():
        model(input_ids=x)  # an evaluation before training, as the pretrain stage does
    model = prepare_qlora(model, LoraSpec(r=4, alpha=8), quantized=True)
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    # lora_B starts at zero, so its gradient (A @ upstream grad) is what shows the signal got down here
    first = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
