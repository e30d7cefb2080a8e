#!/usr/bin/env python3
"""Side-by-side benchmark: HF transformers (PyTorch, eager attention) against `engram bench forward`,
on the same model, input shapes and thread count, in one run. Prints both tables and the ratios.

    python bench/torch_forward.py MODEL [--engram target/release/engram] [--threads 2]
                                  [--device cpu|cuda] [--dtype f32|bf16|f16] [--iters 5]
    python bench/torch_forward.py --write-random-gpt2-xl DIR --tokenizer-from ../shared/tokenizers/gpt2

MODEL is a HF directory or a .gguf file (transformers dequantizes GGUF to fp32; needs `pip install gguf accelerate`).
torch and transformers are needed only here, never by the tests.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def synthetic_rows(vocab, batch, seq):
    # Same ids as engram::bench::synthetic_rows.
    return [[(i * 31 + b * 7 + 1) % vocab for i in range(seq)] for b in range(batch)]


def median_time(iters, fn, sync):
    fn()
    sync()
    times = []
    for _ in range(max(iters, 1)):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_bench(args):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if args.model.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(args.model)),
            gguf_file=os.path.basename(args.model),
            dtype=dtype,
            attn_implementation="eager",
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="eager")
    model.eval().to(args.device)
    cfg = model.config
    vocab = cfg.vocab_size
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024)
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)
    rows = []
    with torch.inference_mode():
        for batch, seq in [(1, 64), (8, 128)]:
            seq = min(seq, n_ctx)
            ids = torch.tensor(synthetic_rows(vocab, batch, seq), device=args.device)
            t = median_time(args.iters, lambda: model(ids, use_cache=False).logits, sync)
            rows.append({"task": "forward", "batch": batch, "seq": seq, "median_ms": t * 1e3,
                         "tokens_per_s": batch * seq / t})
        for batch in [1, 8]:
            n = args.gen_tokens
            prompt_len = max(1, min(16, n_ctx - n))
            ids = torch.tensor(synthetic_rows(vocab, batch, prompt_len), device=args.device)
            mask = torch.ones_like(ids)

            def gen():
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, use_cache=True, pad_token_id=0)

            t = median_time(max(1, (args.iters + 3) // 4), gen, sync)
            rows.append({"task": f"generate (prompt {prompt_len}, kv cache)", "batch": batch, "seq": n,
                         "median_ms": t * 1e3, "tokens_per_s": batch * n / t})
    return rows, torch.__version__


def engram_bench(args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.engram, "bench", "forward", args.model, "--device", args.device, "--dtype", args.dtype,
           "--iters", str(args.iters), "--gen-tokens", str(args.gen_tokens), "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(f"{' '.join(cmd)} failed with exit status {out.returncode}")
    return json.loads(out.stdout)


def write_random_gpt2_xl(out_dir, tokenizer_from):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=1600, n_layer=48, n_head=25, n_positions=1024, vocab_size=50257)
    # 1.5 B parameters: initialised on the GPU where there is one (far faster than the CPU).
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = GPT2LMHeadModel(cfg)
    # safetensors is the default in transformers 4.35+ and the only format in 5.x (which refuses a
    # `safe_serialization` argument); one file of 6.2 GB (4.x would shard at 5 GB by default).
    model.save_pretrained(out_dir, max_shard_size="20GB")
    for f in ["tokenizer.json", "vocab.json", "merges.txt"]:
        p = os.path.join(tokenizer_from, f)
        if os.path.exists(p):
            shutil.copy(p, out_dir)
    print(f"wrote random GPT-2-XL-shaped weights to {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--engram", default="target/release/engram")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--write-random-gpt2-xl")
    ap.add_argument("--json-out", help="also write both tables and the ratios to this JSON file")
    ap.add_argument("--tokenizer-from", default="../shared/tokenizers/gpt2")
    args = ap.parse_args()
    if args.write_random_gpt2_xl:
        write_random_gpt2_xl(args.write_random_gpt2_xl, args.tokenizer_from)
        return
    if not args.model:
        ap.error("MODEL is required")
    ours = engram_bench(args)
    theirs, torch_version = torch_bench(args)
    print(f"model {args.model}, device {args.device}, dtype {args.dtype}, threads {args.threads}, "
          f"median of {args.iters} runs; torch {torch_version} eager")
    print(f"{'task':<34} {'shape':>9} {'engram tok/s':>13} {'torch tok/s':>12} {'ratio':>7}")
    for a, b in zip(ours, theirs):
        shape = f"{a['batch']}x{a['seq']}"
        print(f"{a['task']:<34} {shape:>9} {a['tokens_per_s']:>13.1f} {b['tokens_per_s']:>12.1f} "
              f"{a['tokens_per_s'] / b['tokens_per_s']:>6.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"model": args.model, "device": args.device, "dtype": args.dtype,
                       "torch": torch_version, "engram": ours, "hf_eager": theirs,
                       "ratio": [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs)]},
                      f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
