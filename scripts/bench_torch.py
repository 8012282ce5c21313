#!/usr/bin/env python3
"""Times the configs of benches/text_encoding.rs in PyTorch on this machine's CPU, for the
Rust/PyTorch ratios in docs/performance.md. Random weights (timing does not depend on them).

    python3 scripts/bench_torch.py [--threads N] [--sd] [--json FILE]

scripts/bench-cpu.sh runs it beside the Rust benches and prints the ratios.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

import ella_reference

FIXTURES = Path(__file__).resolve().parent.parent / "ella-core" / "tests" / "fixtures"
PROMPT = "a red book on a wooden table next to a cup of coffee, morning light"


def timeit(fn, min_runs=10, min_seconds=3.0):
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sd_benches():
    """benches/sd.rs: one U-Net step (CFG: batch 2, 64 tokens; and batch 1) and one VAE
    decode at 256×256, and the live previews: ComfyUI's linear latent→RGB projection and a
    TAESD (`AutoencoderTiny`, its real config) decode."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from preview_fixtures import SD15_LATENT_RGB

    from make_manifests import SD15_UNET, SD15_VAE

    results = {}
    latents = torch.randn(2, 4, 32, 32)
    context = torch.randn(2, 64, 768)
    for name, widths in [("mid-size", (160, 320, 640, 640)), ("sd15", SD15_UNET["block_out_channels"])]:
        unet = UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": widths}).eval()
        t = torch.tensor([500])
        results[f"sd/unet step/{name}/256x256 cfg"] = timeit(
            lambda: unet(latents, t, encoder_hidden_states=context).sample, min_runs=3, min_seconds=10
        )
        if name == "sd15":
            results["sd/unet step/sd15/256x256 no cfg"] = timeit(
                lambda: unet(latents[:1], t, encoder_hidden_states=context[:1]).sample, min_runs=3, min_seconds=10
            )
        del unet
    z = torch.randn(1, 4, 32, 32)
    for name, widths in [("mid-size", (64, 128, 256, 256)), ("sd15", SD15_VAE["block_out_channels"])]:
        vae = AutoencoderKL(**{**SD15_VAE, "block_out_channels": widths}).eval()
        results[f"sd/vae decode/{name}/256x256"] = timeit(lambda: vae.decode(z).sample, min_runs=3, min_seconds=10)
        del vae
    taesd = AutoencoderTiny().eval()
    results["sd/preview/taesd/256x256"] = timeit(lambda: taesd.decode(z).sample, min_runs=3, min_seconds=3)
    linear = lambda: (((z[0].permute(1, 2, 0) @ SD15_LATENT_RGB + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8)
    results["sd/preview/linear/256x256"] = timeit(linear, min_runs=10, min_seconds=1)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sd", action="store_true", help="also time the U-Net and VAE (benches/sd.rs)")
    parser.add_argument("--json", type=Path, help="also write the median seconds per benchmark here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}

    # Tiny test models, 128 tokens (fixed mode), tokenization included as on the Rust side.
    tokenizer = T5Tokenizer.from_pretrained(str(FIXTURES / "t5"))
    t5 = T5EncoderModel.from_pretrained(str(FIXTURES / "t5")).eval()

    def tiny_t5():
        enc = tokenizer([PROMPT], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        return t5(**enc).last_hidden_state

    results["t5/tiny/128 tokens"] = timeit(tiny_t5)
    config = json.loads((FIXTURES / "ella" / "config.json").read_text())
    ella = ella_reference.ELLA(**config).eval()
    ella.load_state_dict(load_file(str(FIXTURES / "ella" / "ella.safetensors")))
    with torch.inference_mode():
        states = tiny_t5()
    results["tsc/tiny/128 tokens"] = timeit(lambda: ella(states, 500))

    # flan-t5-base sizes, 128 tokens.
    base = T5EncoderModel(
        T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    ).eval()
    ids = torch.tensor([[(i * 37) % 32000 for i in range(128)]])
    results["mid-size/t5/flan-t5-base/128 tokens"] = timeit(lambda: base(input_ids=ids).last_hidden_state)
    # Official connector sizes.
    full = ella_reference.ELLA().eval()
    states = torch.randn(1, 128, 2048)
    results["mid-size/tsc/full/128 tokens"] = timeit(lambda: full(states, 500))

    if args.sd:
        results.update(sd_benches())

    print(f"PyTorch {torch.__version__}, {args.threads} threads")
    for name, seconds in results.items():
        print(f"{name:40s} {seconds * 1e3:10.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
