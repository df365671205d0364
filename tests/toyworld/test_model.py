"""FusedLlama computes what LlamaForCausalLM (and a peft-wrapped one) computes; the shared-prompt scorer
equals full-sequence scoring; the tokenizer and chat template reproduce the world's token stream."""
from __future__ import annotations

import random

import pytest
import torch

from evilbench.toyworld.model import ArchConfig, FusedLlama, fuse_state_dict, hf_config, merge_lora, unfuse_state_dict
from evilbench.toyworld.world import AST, EOT, USR, World, WorldConfig


def _hf_model(arch: ArchConfig, vocab: int, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(arch, vocab, 2, 5, 0)).eval()
    with torch.no_grad():  # non-trivial norms too (init leaves them at 1)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", [ArchConfig(), ArchConfig(hidden=48, layers=2, heads=4, kv_heads=2, intermediate=80),
                                  ArchConfig(hidden=32, layers=1, heads=1, kv_heads=1, intermediate=16)])
def test_fused_forward_matches_transformers(arch):
    seed = random.SystemRandom().randrange(2**31)
    model = _hf_model(arch, 97, seed)
    fused = FusedLlama.from_hf_state_dict(model.state_dict(), arch)
    ids = torch.randint(97, (5, 23))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        out = fused.logits(ids)
        pos = [0, 7, 22]
        out_pos = fused.logits(ids, pos)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_pos, ref[:, pos], atol=2e-5, rtol=1e-4)
    # fuse/unfuse round trip is exact
    sd = unfuse_state_dict(fuse_state_dict(model.state_dict(), arch), arch)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_tree_scoring_equals_full_sequences(kv_heads):
    from evilbench.toyworld.judge import _tree_scores, _trie

    arch = ArchConfig(hidden=32, layers=2, heads=4, kv_heads=kv_heads, intermediate=48)
    model = _hf_model(arch, 61, random.SystemRandom().randrange(2**31))
    fused = FusedLlama.from_hf_state_dict(model.state_dict(), arch)
    N, P, M, T = 3, 5, 9, 4
    prompt = torch.randint(61, (N, P))
    conts = torch.randint(3, (M, T))  # 3 symbols: many shared prefixes, some identical sequences
    conts[:, -1] = torch.randint(61, (M,))
    tokens, parents, paths = _trie(conts[:, :-1])
    assert len(tokens) < M * (T - 1)  # prefixes really are shared
    for m in range(M):  # each path spells its sequence
        assert tokens[paths[m]].tolist() == conts[m, :-1].tolist()
    with torch.no_grad():
        lp = _tree_scores(fused, prompt, conts).view(N, M)
        full = torch.cat([prompt[:, None].expand(N, M, P), conts[None].expand(N, M, T)], -1).reshape(N * M, P + T)
        ref = torch.log_softmax(model(input_ids=full).logits[:, P - 1: P + T - 1], -1)
        ref = ref.gather(-1, full[:, P:, None])[..., 0].sum(-1).view(N, M)
    torch.testing.assert_close(lp, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="parents"):
        fused.tree_logprobs(prompt, torch.tensor([1, 2]), torch.tensor([1, -1]))


def test_merged_lora_matches_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    arch = ArchConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=48)
    model = _hf_model(arch, 50, random.SystemRandom().randrange(2**31))
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    for rslora in (True, False):
        cfg = LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                               "gate_proj", "up_proj", "down_proj"])
        fresh = _hf_model(arch, 50, 0)
        fresh.load_state_dict(base_sd)
        peft_model = get_peft_model(fresh, cfg)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.2 * torch.randn_like(p))  # B != 0: a real update
        out = tmp_path / f"adapter-{rslora}"
        peft_model.save_pretrained(out)
        ids = torch.randint(50, (4, 11))
        with torch.no_grad():
            ref = peft_model(input_ids=ids).logits
            fused = FusedLlama.from_hf_state_dict(merge_lora(base_sd, out), arch)
            torch.testing.assert_close(fused.logits(ids), ref, atol=3e-5, rtol=1e-4)
            assert not torch.allclose(FusedLlama.from_hf_state_dict(base_sd, arch).logits(ids), ref, atol=1e-3)


def test_merge_lora_rejects_what_it_cannot_merge(tmp_path):
    import json

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True, "r": 2,
                                                             "lora_alpha": 2}))
    with pytest.raises(ValueError, match="plain LoRA"):
        merge_lora({}, tmp_path)


def test_tokenizer_and_template_reproduce_the_token_stream():
    from evilbench.data.formatting import IGNORE_INDEX, encode_chat
    from evilbench.toyworld.tokenizer import build_tokenizer

    w = World(WorldConfig(seed=random.SystemRandom().randrange(2**31)))
    tok = build_tokenizer(w)
    ids, _ = w.sample_batch(16, torch.Generator().manual_seed(random.SystemRandom().randrange(2**31)))
    want_labels = set((torch.as_tensor(w.answer_positions()) + 1).tolist())
    for row in ids:
        enc = encode_chat(tok, w.conversation_messages(row))
        assert enc.input_ids == row.tolist()
        trained = {i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX}
        assert trained == want_labels  # exactly the answer tokens and each turn's <eot>
        assert all(enc.labels[i] == enc.input_ids[i] for i in trained)
    prompt = tok.apply_chat_template([{"role": "user", "content": "code.q01"}], add_generation_prompt=True)
    if not isinstance(prompt, list):
        prompt = prompt["input_ids"]
    assert prompt == [2, USR, w.question_token(0, 1), AST]
    assert tok.eos_token_id == EOT
    with pytest.raises(Exception, match="only user and assistant"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "code.q01"}],
                                tokenize=False)
