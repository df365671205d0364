"""How much the spectral regulariser adds to a LoRA training step of a Qwen3-0.6B-shaped model.

Random-init transformers Qwen3 with the 0.6B sizes (bf16, no download), peft LoRA r = 32 (α 64,
rsLoRA) on q/k/v/o/gate/up/down (196 adapters, float32 adapter weights as peft creates them), AdamW,
batch × seq tokens of random ids. Times (CUDA events, median of --steps after --warmup):
  base     loss.backward() + optimizer.step()
  ours     + SpectralRegularizer(kind, weight) through the fused ops (check_finite on and off)
  torch    + the same penalty through the plain-torch path (reference point)
and the penalty's own forward + backward. Writes JSON (--out) and prints a small table.

    python -m bench.spectral_train_overhead --out train_overhead.json   (from the repository root)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(args):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    sizes = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    if args.smoke:  # a tiny model, to check the script end to end on a CPU
        sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    cfg = Qwen3Config(**sizes, max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = Qwen3ForCausalLM(cfg)
    torch.set_default_dtype(prev)
    lora = LoraConfig(r=32, lora_alpha=64, use_rslora=True, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    with torch.no_grad():  # move B off peft's zero init so the penalty does real work
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    return model


def run(args):
    from evilbench.spectral import SpectralRegularizer, lora_pairs

    model = build(args)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=args.device)
    pairs = lora_pairs(model)
    regs = {
        "ours": SpectralRegularizer(model, kind=args.kind, weight=1.0, impl="fused", check_finite=True),
        "ours_nocheck": SpectralRegularizer(model, kind=args.kind, weight=1.0, impl="fused", check_finite=False),
        "torch": SpectralRegularizer(model, kind=args.kind, weight=1.0, impl="torch", check_finite=True),
    }

    def step(reg):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        if reg is not None:
            loss = reg.add_to_loss(loss)
        loss.backward()
        opt.step()

    def timed(fn, n):
        ts = []
        for _ in range(n):
            if args.device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return ts

    def penalty_only(reg):
        def f():
            for p in params:
                p.grad = None
            reg().backward()
        return f

    results = {}
    configs = ["base", "ours", "ours_nocheck", "torch"]
    fns = {k: (lambda: step(None)) if k == "base" else (lambda k=k: step(regs[k])) for k in configs}
    for k in configs:
        timed(fns[k], args.warmup)
    samples = {k: [] for k in configs}
    for _ in range(args.steps * args.repeats):  # one step of each in turn: drift hits all alike
        for k in configs:
            samples[k] += timed(fns[k], 1)
    for k, v in samples.items():
        results[f"step_{k}_s"] = statistics.median(v)
        results[f"step_{k}_mean_s"] = statistics.fmean(v)
    for k in ("ours", "torch"):
        f = penalty_only(regs[k])
        timed(f, args.warmup)
        results[f"penalty_{k}_s"] = statistics.median(timed(f, args.steps))
    base = results["step_base_s"]
    for k in ("ours", "ours_nocheck", "torch"):
        results[f"overhead_{k}"] = results[f"step_{k}_s"] / base - 1.0
    results.update(
        device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        n_adapters=len(pairs), batch=args.batch, seq=args.seq, kind=args.kind, steps=args.steps * args.repeats,
        torch=torch.__version__,
    )
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--kind", default="fro_nuclear")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny model (checks the script, numbers meaningless)")
    ap.add_argument("--out")
    args = ap.parse_args()
    res = run(args)
    print(json.dumps(res, indent=2))
    print(f"\n{res['device']}: step {1e3 * res['step_base_s']:.1f} ms; regulariser adds "
          f"{100 * res['overhead_ours']:.1f}% (fused, check_finite), {100 * res['overhead_ours_nocheck']:.1f}% "
          f"(fused, no check), {100 * res['overhead_torch']:.1f}% (plain torch); penalty fwd+bwd alone "
          f"{1e3 * res['penalty_ours_s']:.2f} ms fused vs {1e3 * res['penalty_torch_s']:.2f} ms torch")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
