"""The README's Python snippet runs as written (on a tiny peft model) and does what it says."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_kernel_snippet_runs_on_a_tiny_peft_model():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from evilbench.spectral import lora_pairs

    (snippet,) = [b for b in _python_blocks() if "SpectralRegularizer" in b]
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = get_peft_model(Qwen3ForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for p in lora_pairs(model):
            p.B.normal_()
    ids = torch.randint(0, 64, (2, 8))
    task_loss = model(input_ids=ids, labels=ids).loss
    pairs = lora_pairs(model)
    env = {"lora_params": [p for p in model.parameters() if p.requires_grad], "peft_model": model,
           "task_loss": task_loss, "g1": torch.randn(4, 32), "g2": torch.randn(48, 4),
           "g3": torch.randn(4, 48, dtype=torch.bfloat16),
           "A_list": [p.A for p in pairs], "B_list": [p.B for p in pairs]}
    exec(compile(snippet, str(README), "exec"), env)

    assert env["loss"].item() > task_loss.item()  # a non-flat adapter adds a positive penalty
    env["loss"].backward()
    env["opt"].step()
    assert [o.shape for o in env["ortho"]] == [(4, 32), (48, 4), (4, 48)]
    assert env["ortho"][2].dtype == torch.bfloat16
    assert len(env["sigmas"]) == len(pairs) and all(s.shape == (4,) for s in env["sigmas"])
