#!/usr/bin/env python3
"""The whole-image CPU benchmark, PyTorch side (benches/image.rs is ella's): the full-size
files of an ELLA user with random weights, loaded and turned into one image.

    python3 scripts/bench_image.py write DIR        # DIR/f32 and DIR/f16 (~14 GB), once
    python3 scripts/bench_image.py run DIR/f32 [--threads N] [--load-only] [--json FILE]

`write` makes the files in the official layouts: the T5 folder (transformers'
T5EncoderModel at flan-t5-xl sizes, `config.json`, `model.safetensors`, the tiny test
tokenizer, whose ids are within flan-t5-xl's vocabulary), the connector
(`ella.safetensors`, the official key layout) and an SD1.5 diffusers folder (`unet/`,
`vae/`, `scheduler/`). `f32` is all F32 (as stable-diffusion-v1-5's diffusers folder);
`f16` is the hosted flan-t5-xl encoder's mixed layout (`wo` in F32, the rest F16), the
official F16 connector and F16 SD weights. Both load into F32 models, as the CPU runs F32.

`run` times, in this process: loading every model from the folder, then (unless
`--load-only`) one image of `GenerateRequest::default()`'s work: 512×512, 25 DPM-Solver++ 2M
steps, guidance 10, flexible token length (each prompt's own length), the connector at every
U-Net call (the official inference.py's proxy), VAE decode. It prints one `RESULT` JSON
line: seconds to load, seconds per image, peak resident memory (KiB, the process's maximum).
scripts/bench-cpu.sh runs each case in its own process beside ella's.
"""

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

import ella_reference
from make_fixtures import mixed_f16, save_state
from make_manifests import SD15_UNET, SD15_VAE
from sd_fixtures import SD15_SCHEDULER_CONFIG, ELLAProxyUNet, make_scheduler

FIXTURES = Path(__file__).resolve().parent.parent / "ella-core" / "tests" / "fixtures"
# The prompt of benches/image.rs.
PROMPT = (
    "a red book on a wooden table next to a cup of coffee, morning light through a window, "
    "dust in the air, a cat asleep on a chair in the background"
)
FLAN_T5_XL = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)


def write(out: Path):
    torch.manual_seed(0)
    t5 = T5EncoderModel(FLAN_T5_XL).eval()
    ella = ella_reference.ELLA().eval()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    vae = AutoencoderKL(**SD15_VAE).eval()
    for name, half in [("f32", False), ("f16", True)]:  # F16 last: the models convert in place
        root = out / name
        (root / "t5").mkdir(parents=True, exist_ok=True)
        FLAN_T5_XL.to_json_file(str(root / "t5" / "config.json"))
        for f in ["tokenizer.json", "spiece.model"]:
            shutil.copy(FIXTURES / "t5" / f, root / "t5" / f)
        save_state(t5, root / "t5" / "model.safetensors", mixed_f16 if half else lambda _: torch.float32)
        dtype = torch.float16 if half else torch.float32
        save_file({k: v.to(dtype).contiguous() for k, v in ella.state_dict().items()}, str(root / "ella.safetensors"))
        unet.to(dtype).save_pretrained(str(root / "sd" / "unet"))
        vae.to(dtype).save_pretrained(str(root / "sd" / "vae"))
        (root / "sd" / "scheduler").mkdir(parents=True, exist_ok=True)
        (root / "sd" / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
        print(f"wrote {root}", flush=True)


def run(root: Path, load_only: bool):
    start = time.perf_counter()
    tokenizer = T5Tokenizer.from_pretrained(str(root / "t5"))
    t5 = T5EncoderModel.from_pretrained(str(root / "t5"), torch_dtype=torch.float32).eval()
    ella = ella_reference.ELLA().eval()
    ella.load_state_dict({k: v.float() for k, v in load_file(str(root / "ella.safetensors")).items()})
    unet = UNet2DConditionModel.from_pretrained(str(root / "sd"), subfolder="unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(str(root / "sd"), subfolder="vae", torch_dtype=torch.float32).eval()
    load = time.perf_counter() - start
    result = {"load": load}
    if not load_only:
        start = time.perf_counter()
        with torch.inference_mode():
            # Flexible token length: each prompt encoded at its own length, as ella's default.
            neg = t5(**tokenizer([""], return_tensors="pt")).last_hidden_state
            pos = t5(**tokenizer([PROMPT], return_tensors="pt")).last_hidden_state
            proxy = ELLAProxyUNet(ella, unet)
            proxy.flexible_max_length_workaround = [neg.shape[1], pos.shape[1]]
            n = max(neg.shape[1], pos.shape[1])
            pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))
            pipe = StableDiffusionPipeline(
                vae=vae, text_encoder=None, tokenizer=None, unet=proxy, scheduler=make_scheduler("dpm++2m"),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            pipe(prompt_embeds=pad(pos), negative_prompt_embeds=pad(neg), guidance_scale=10.0,
                 num_inference_steps=25, height=512, width=512, output_type="np",
                 generator=torch.Generator().manual_seed(1000))
            proxy.conditions.clear()
        result["image"] = time.perf_counter() - start
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["write", "run"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the RESULT object here")
    args = parser.parse_args()
    if args.command == "write":
        write(args.dir)
        return
    torch.set_num_threads(args.threads)
    result = run(args.dir, args.load_only)
    print("RESULT " + json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
