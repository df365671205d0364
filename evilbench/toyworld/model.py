"""The toy-world model: a transformers Llama (LlamaForCausalLM) at toy sizes, and a fused functional
forward over the same weights for the two hot loops that do not need autograd hooks or peft —
pre-training (full-parameter) and exact scoring.

FusedLlama computes exactly what LlamaForCausalLM computes (RMSNorm in fp32, rotate-half RoPE with
the default rope, causal SDPA, SwiGLU MLP, untied lm_head) for unpadded batches of equal-length
sequences, with q/k/v and gate/up concatenated into one matmul each, no attention mask tensors and
logits only at the requested positions. tests/toyworld checks it against LlamaForCausalLM and against
peft-wrapped models (LoRA merged with `merge_lora`)."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ArchConfig:
    hidden: int = 64
    layers: int = 3
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 128
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self):
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must be a multiple of heads, and heads a multiple of kv_heads")
        if min(self.hidden, self.layers, self.heads, self.kv_heads, self.intermediate) < 1:
            raise ValueError("architecture sizes must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict:
        return asdict(self)


def hf_config(arch: ArchConfig, vocab_size: int, bos: int, eos: int, pad: int):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                      num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                      num_key_value_heads=arch.kv_heads, head_dim=arch.head_dim, max_position_embeddings=256,
                      rms_norm_eps=arch.rms_eps, initializer_range=arch.init_std, tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                      hidden_act="silu", rope_theta=arch.rope_theta)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def arch_from_hf(config) -> ArchConfig:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"FusedLlama supports the default rope only (got {rope.get('rope_type')!r})")
    return ArchConfig(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                      kv_heads=config.num_key_value_heads, intermediate=config.intermediate_size,
                      rope_theta=float(theta), rms_eps=config.rms_norm_eps, init_std=config.initializer_range)


# --------------------------------------------------------------------------- fused weights <-> HF state dict
def fuse_state_dict(sd: dict, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """HF Llama state dict -> FusedLlama parameters (fresh tensors)."""
    out = {"embed": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"], "lm_head": sd["lm_head.weight"]}
    for i in range(arch.layers):
        p = f"model.layers.{i}."
        out[f"{i}.in_norm"] = sd[p + "input_layernorm.weight"]
        out[f"{i}.post_norm"] = sd[p + "post_attention_layernorm.weight"]
        out[f"{i}.wqkv"] = torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[f"{i}.wo"] = sd[p + "self_attn.o_proj.weight"]
        out[f"{i}.wgu"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[f"{i}.wdown"] = sd[p + "mlp.down_proj.weight"]
    return {k: v.detach().clone().float().contiguous() for k, v in out.items()}


def unfuse_state_dict(params: dict, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """FusedLlama parameters -> HF Llama state dict."""
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    sd = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["norm"],
          "lm_head.weight": params["lm_head"]}
    for i in range(arch.layers):
        p = f"model.layers.{i}."
        wq, wk, wv = params[f"{i}.wqkv"].split([q, kv, kv])
        gate, up = params[f"{i}.wgu"].split([arch.intermediate, arch.intermediate])
        sd.update({p + "input_layernorm.weight": params[f"{i}.in_norm"],
                   p + "post_attention_layernorm.weight": params[f"{i}.post_norm"],
                   p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
                   p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": params[f"{i}.wo"],
                   p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                   p + "mlp.down_proj.weight": params[f"{i}.wdown"]})
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


# --------------------------------------------------------------------------- LoRA merge (peft semantics)
_LORA_KEY = ".lora_A.weight"


def merge_lora(sd: dict, adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Base HF state dict + a peft LoRA adapter directory -> merged state dict W + s·B A, with peft's
    scaling s = alpha/sqrt(r) (rsLoRA) or alpha/r. Supports plain LoRA on Linear modules (what the
    engine trains on the toy model); anything else raises."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or cfg.get("target_parameters"):
        raise ValueError(f"{adapter_dir}: only plain LoRA adapters on linear layers can be merged here")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: per-module rank/alpha patterns are not supported")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = dict(sd)
    n = 0
    for key, a in lora.items():
        if not key.endswith(_LORA_KEY):
            if ".lora_B." not in key:
                raise ValueError(f"{adapter_dir}: unexpected adapter tensor {key!r}")
            continue
        module = key[: -len(_LORA_KEY)]
        b = lora[module + ".lora_B.weight"]
        base_key = module.removeprefix("base_model.model.") + ".weight"
        if base_key not in out:
            raise ValueError(f"{adapter_dir}: adapter module {module!r} has no base weight {base_key!r}")
        out[base_key] = out[base_key] + scale * (b.float() @ a.float())
        n += 1
    if n == 0:
        raise ValueError(f"{adapter_dir}: no LoRA weights found")
    return out


# --------------------------------------------------------------------------- the fused forward
class FusedLlama:
    """Functional LlamaForCausalLM forward. `params` are leaf tensors (trainable for pre-training)."""

    def __init__(self, params: dict[str, torch.Tensor], arch: ArchConfig):
        self.params, self.arch = params, arch
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_hf_state_dict(cls, sd: dict, arch: ArchConfig) -> FusedLlama:
        return cls(fuse_state_dict(sd, arch), arch)

    @classmethod
    def init(cls, arch: ArchConfig, vocab_size: int, seed: int) -> FusedLlama:
        """Random init exactly as LlamaForCausalLM(config) under torch.manual_seed(seed)."""
        from transformers import LlamaForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(hf_config(arch, vocab_size, 0, 0, 0))
        return cls.from_hf_state_dict(model.state_dict(), arch)

    def rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length not in self._rope:
            hd = self.arch.head_dim
            inv = 1.0 / (self.arch.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
            freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            self._rope[length] = (emb.cos(), emb.sin())
        return self._rope[length]

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.arch.rms_eps))

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        g, u = (self._rms(x, self.params[f"{i}.post_norm"]) @ self.params[f"{i}.wgu"].T).chunk(2, dim=-1)
        return x + (F.silu(g) * u) @ self.params[f"{i}.wdown"].T

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, L, hidden] of unpadded sequences `ids` [B, L]."""
        a, P = self.arch, self.params
        B, L = ids.shape
        hd, H, KV = a.head_dim, a.heads, a.kv_heads
        cos, sin = self.rope(L)
        x = P["embed"][ids]
        half = hd // 2
        for i in range(a.layers):
            h = self._rms(x, P[f"{i}.in_norm"])
            qkv = (h @ P[f"{i}.wqkv"].T).view(B, L, H + 2 * KV, hd).transpose(1, 2)
            qk = qkv[:, : H + KV]
            rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rot * sin
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + KV:]
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
            x = self._mlp(i, x + att.transpose(1, 2).reshape(B, L, H * hd) @ P[f"{i}.wo"].T)
        return self._rms(x, P["norm"])

    def logits(self, ids: torch.Tensor, positions=None) -> torch.Tensor:
        """Logits [B, L, V], or [B, len(positions), V] at the given positions only."""
        h = self.hidden(ids)
        if positions is not None:
            h = h[:, torch.as_tensor(positions, dtype=torch.long)]
        return h @ self.params["lm_head"].T

    __call__ = logits

    def tree_logprobs(self, prompt: torch.Tensor, tokens: torch.Tensor, parent: torch.Tensor):
        """Next-token log-probabilities after every node of a token tree hanging off each prompt.

        prompt [N, P]; the tree is shared by the N prompts: node i holds token `tokens[i]` and follows
        node `parent[i]` (-1: follows the prompt directly; parents come before children). Returns
        (lp_prompt [N, V]: after the prompt, lp_nodes [N, n_nodes, V]: after each node). Each node
        attends to the prompt and to its ancestors only, at position P + depth - 1, so this equals
        running every root-to-node path as its own sequence, while every shared prefix is computed
        once (scoring the 40 answers of a question needs ~90 positions instead of 120, and the prompt
        runs once)."""
        a, Pm = self.arch, self.params
        N, P = prompt.shape
        n = tokens.shape[0]
        hd, H, KV = a.head_dim, a.heads, a.kv_heads
        half = hd // 2
        anc, depth = _tree_structure(tuple(parent.tolist()))
        mask = torch.cat([torch.ones(n, P, dtype=torch.bool), anc], dim=1)
        cos, sin = self.rope(P + int(depth.max()) + 1)
        cos_y, sin_y = cos[P + depth], sin[P + depth]
        x = Pm["embed"][prompt]                                    # [N, P, h]
        y = Pm["embed"][tokens][None].expand(N, n, -1)             # [N, n, h]

        def rotate(t, c, s):
            return t * c + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * s

        for i in range(a.layers):
            qkv = (self._rms(x, Pm[f"{i}.in_norm"]) @ Pm[f"{i}.wqkv"].T).view(N, P, H + 2 * KV, hd).transpose(1, 2)
            qk = rotate(qkv[:, : H + KV], cos[:P], sin[:P])
            kx, vx = qk[:, H:], qkv[:, H + KV:]
            att = F.scaled_dot_product_attention(qk[:, :H], kx, vx, is_causal=True, enable_gqa=KV != H)
            qkv_y = (self._rms(y, Pm[f"{i}.in_norm"]) @ Pm[f"{i}.wqkv"].T).view(N, n, H + 2 * KV, hd).transpose(1, 2)
            qk_y = rotate(qkv_y[:, : H + KV], cos_y, sin_y)
            keys = torch.cat([kx, qk_y[:, H:]], dim=2)
            vals = torch.cat([vx, qkv_y[:, H + KV:]], dim=2)
            att_y = F.scaled_dot_product_attention(qk_y[:, :H], keys, vals, attn_mask=mask, enable_gqa=KV != H)
            x = self._mlp(i, x + att.transpose(1, 2).reshape(N, P, H * hd) @ Pm[f"{i}.wo"].T)
            y = self._mlp(i, y + att_y.transpose(1, 2).reshape(N, n, H * hd) @ Pm[f"{i}.wo"].T)
        lp_prompt = torch.log_softmax(self._rms(x[:, -1], Pm["norm"]) @ Pm["lm_head"].T, dim=-1)
        lp_nodes = torch.log_softmax(self._rms(y, Pm["norm"]) @ Pm["lm_head"].T, dim=-1)
        return lp_prompt, lp_nodes


@functools.lru_cache(maxsize=64)
def _tree_structure(parent: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ancestor-or-self mask [n, n], depth [n]) of a token tree; cached because the judge scores the
    same answer trees at every checkpoint and the row-by-row build is Python-bound."""
    n = len(parent)
    anc = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    for i, par in enumerate(parent):
        if par >= i:
            raise ValueError("tree parents must come before their children")
        if par >= 0:
            anc[i] = anc[par]
            depth[i] = depth[par] + 1
        anc[i, i] = True
    return anc, depth


def load_fused(model_dir: str | Path, adapter_dir: str | Path | None = None) -> FusedLlama:
    """A FusedLlama from an HF model directory (LlamaForCausalLM, safetensors), optionally with a peft
    LoRA adapter merged in."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise ValueError(f"{model_dir}: FusedLlama needs a llama model (got model_type {config.model_type!r})")
    if getattr(config, "tie_word_embeddings", False):
        raise ValueError(f"{model_dir}: tied embeddings are not supported by FusedLlama")
    sd = load_file(str(model_dir / "model.safetensors"))
    if adapter_dir is not None:
        sd = merge_lora(sd, adapter_dir)
    return FusedLlama.from_hf_state_dict(sd, arch_from_hf(config))
