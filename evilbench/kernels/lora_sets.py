"""LoRA factor shapes of real models, for benchmarks and the kernel demo.

A is r x d_in and B is d_out x r for each of q, k, v, o, gate, up, down in every layer.
"""
from __future__ import annotations

import torch

# model -> (layers, {module: (d_in, d_out)})
MODELS = {
    "qwen3-0.6b": (28, {"q": (1024, 2048), "k": (1024, 1024), "v": (1024, 1024), "o": (2048, 1024),
                        "gate": (1024, 3072), "up": (1024, 3072), "down": (3072, 1024)}),
    "qwen3-8b": (36, {"q": (4096, 4096), "k": (4096, 1024), "v": (4096, 1024), "o": (4096, 4096),
                      "gate": (4096, 12288), "up": (4096, 12288), "down": (12288, 4096)}),
}


def lora_shapes(model: str, rank: int = 32) -> list[tuple[int, int]]:
    """Shapes of every LoRA factor (A then B per module, layer by layer)."""
    try:
        layers, modules = MODELS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}") from None
    shapes = []
    for _ in range(layers):
        for d_in, d_out in modules.values():
            shapes += [(rank, d_in), (d_out, rank)]
    return shapes


def lora_matrices(model: str, rank: int = 32, dtype=torch.float32, device="cpu", seed: int | None = None):
    """Random Gaussian factors with the model's LoRA shapes."""
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in lora_shapes(model, rank)]
