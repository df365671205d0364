"""Walks a peft model and returns its LoRA (A, B) pairs as 2-D tensors attached to the parameters.

Supported peft layers: lora.Linear (lora_A weight r × in, lora_B weight out × r), lora.Embedding
(lora_embedding_A r × num_embeddings, lora_embedding_B dim × r; ΔW = (BA)ᵀ has the same spectrum),
lora.Conv1d/2d/3d (A flattened to r × in·k…, B must be a 1×…×1 kernel), and ParamWrapper layers
created by `LoraConfig(target_parameters=...)`: a 2-D target gives one pair; a 3-D MoE expert stack
of E experts gives one pair per expert (peft stores A as (E·r) × k with rows expert-major and B as
l × (r·E) with columns expert-minor, so expert e is A.view(E, r, k)[e], B.view(l, r, E)[..., e]; for
transformers' (experts, in, out) stacks peft swaps the roles, ΔW_e = B_e A_e is in × out, which has
the same singular values as the out × in map). Expert B factors are strided views: spectral_penalty
copies them (autograd carries the gradient back to the shared parameter).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraPair:
    module: str  # qualified module name (":param[e]" appended for ParamWrapper targets / experts)
    adapter: str
    A: torch.Tensor  # r × d_in, a view of the parameter (gradients flow to it)
    B: torch.Tensor  # d_out × r
    scaling: float  # peft's scaling (alpha/r, or alpha/√r with rsLoRA); ΔW = scaling · B A

    @property
    def r(self) -> int:
        return self.A.shape[0]


def _lora_layer_classes():
    from peft.tuners.lora.layer import LoraLayer

    try:
        from peft.tuners.lora.layer import ParamWrapper
    except ImportError:  # older peft without target_parameters
        ParamWrapper = ()
    return LoraLayer, ParamWrapper


def _layer_adapters(layer, adapter_name: str | None) -> list[str]:
    present = set(getattr(layer, "lora_A", {}).keys()) | set(getattr(layer, "lora_embedding_A", {}).keys())
    if adapter_name is not None:
        return [adapter_name] if adapter_name in present else []
    return [a for a in layer.active_adapters if a in present]


def _pairs_of_layer(name: str, layer, adapter: str, ParamWrapper) -> Iterator[LoraPair]:
    scaling = float(layer.scaling[adapter])
    if adapter in getattr(layer, "lora_embedding_A", {}):
        yield LoraPair(name, adapter, layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter], scaling)
        return
    A_w = layer.lora_A[adapter].weight
    B_w = layer.lora_B[adapter].weight
    if ParamWrapper and isinstance(layer, ParamWrapper):
        E = int(getattr(layer, "num_experts", 1))
        tag = f"{name}:{layer.parameter_name}"
        if E == 1:
            yield LoraPair(tag, adapter, A_w, B_w, scaling)
            return
        r = A_w.shape[0] // E
        A3 = A_w.view(E, r, A_w.shape[-1])
        B3 = B_w.view(B_w.shape[0], r, E)
        for e in range(E):
            yield LoraPair(f"{tag}[{e}]", adapter, A3[e], B3[:, :, e], scaling)
        return
    if A_w.dim() > 2:  # convolutions: ΔW (out × in·k…) = B (out × r) @ A (r × in·k…) for 1×…×1 B kernels
        if any(s != 1 for s in B_w.shape[2:]):
            raise ValueError(f"lora_pairs: {name}: lora_B kernel {tuple(B_w.shape[2:])} is not 1×…×1; ΔW is not B @ A")
        A_w = A_w.reshape(A_w.shape[0], -1)
        B_w = B_w.reshape(B_w.shape[0], B_w.shape[1])
    if A_w.dim() != 2 or B_w.dim() != 2:
        raise ValueError(f"lora_pairs: {name}: unsupported LoRA weights A {tuple(A_w.shape)}, B {tuple(B_w.shape)}")
    yield LoraPair(name, adapter, A_w, B_w, scaling)


def lora_layers(model, adapter_name: str | None = None) -> list[tuple[str, object, str]]:
    """(module name, peft LoRA layer, adapter) for every LoRA layer holding the adapter (None: the
    layer's active adapters)."""
    LoraLayer, _ = _lora_layer_classes()
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in _layer_adapters(module, adapter_name):
                found.append((name, module, adapter))
    return found


def tensor_sources(layers) -> list:
    """For each pair of lora_layers(): either (A, B) parameters usable as they are, or a zero-argument
    function returning fresh (A, B) views (experts, convolutions). Cheap to turn into tensors every
    training step (SpectralRegularizer); the parameters are the live ones."""
    _, ParamWrapper = _lora_layer_classes()
    out = []
    for name, layer, adapter in layers:
        for pair in _pairs_of_layer(name, layer, adapter, ParamWrapper):
            if isinstance(pair.A, torch.nn.Parameter) and isinstance(pair.B, torch.nn.Parameter):
                out.append((pair.A, pair.B))
            else:
                out.append(None)
    if any(s is None for s in out):  # rebuild views per call for the layers that need them
        rebuilt = []
        idx = 0
        for name, layer, adapter in layers:
            pairs = list(_pairs_of_layer(name, layer, adapter, ParamWrapper))
            if all(out[idx + k] is not None for k in range(len(pairs))):
                rebuilt.extend(out[idx : idx + len(pairs)])
            else:
                def views(name=name, layer=layer, adapter=adapter):
                    return [(p.A, p.B) for p in _pairs_of_layer(name, layer, adapter, ParamWrapper)]
                rebuilt.append(views)
            idx += len(pairs)
        out = rebuilt
    return out


def pairs_of_layers(layers) -> list[LoraPair]:
    """The pairs of layers from lora_layers(), as fresh views of the current parameters."""
    _, ParamWrapper = _lora_layer_classes()
    out: list[LoraPair] = []
    for name, layer, adapter in layers:
        out.extend(_pairs_of_layer(name, layer, adapter, ParamWrapper))
    return out


def lora_pairs(model, adapter_name: str | None = None) -> list[LoraPair]:
    """Every LoRA pair of a peft model (or any module tree containing peft LoRA layers), in module
    order. adapter_name None takes each layer's active adapters. Raises ValueError when the model
    has no LoRA layer for the requested adapter."""
    pairs = pairs_of_layers(lora_layers(model, adapter_name))
    if not pairs:
        what = f"adapter {adapter_name!r}" if adapter_name is not None else "active adapter"
        raise ValueError(f"lora_pairs: the model has no peft LoRA layer with an {what}")
    return pairs
