#!/usr/bin/env python3
"""PyTorch/diffusers side of the GPU benchmark (benches/gpu.rs): whole 512x512, 20-step
ELLA images with classifier-free guidance at the real sizes (flan-t5-xl, the official
connector, SD1.5's U-Net and VAE), random weights, on CUDA, in float16 or bfloat16.

The same work as the Rust side: T5 encodes the negative and the positive prompt (fixed
128 tokens, the tiny test tokenizer), the official ELLA proxy runs the connector at every
U-Net call, DPM-Solver++ 2M, guidance 7.5, VAE decode, pixels to host. Prints seconds per
image, per U-Net step, and peak memory (torch's allocator; scripts/gpu-check.sh adds the
device-wide figure) with T5 resident and freed.

    python3 scripts/bench_gpu.py [float16|bfloat16] [images]
"""

import sys
import threading
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import T5Config, T5EncoderModel, T5Tokenizer

import ella_reference
from make_manifests import SD15_UNET, SD15_VAE
from sd_fixtures import SD15_SCHEDULER_CONFIG, ELLAProxyUNet

FIXTURES = Path(__file__).resolve().parent.parent / "ella-core" / "tests" / "fixtures"
STEPS = 20
PROMPT = "a red book on a wooden table next to a cup of coffee"


class DevicePeak:
    """Device-wide used memory (NVML, as nvidia-smi; CUDA context included), polled every 5 ms,
    to compare with the Rust side's figure."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.read = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used
        self.peak = self.read()
        threading.Thread(target=self.poll, daemon=True).start()

    def poll(self):
        while True:
            self.peak = max(self.peak, self.read())
            time.sleep(0.005)

    def reset(self):
        time.sleep(0.02)
        self.peak = self.read()

    def gib(self):
        time.sleep(0.02)
        return self.peak / 2**30


def main():
    dtype = getattr(torch, sys.argv[1] if len(sys.argv) > 1 else "float16")
    images = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    name = f"diffusers {str(dtype).removeprefix('torch.')}"
    device_peak = DevicePeak()
    start = time.perf_counter()
    with torch.device("cuda"):
        t5 = T5EncoderModel(
            T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        ).to(dtype).eval()
        ella = ella_reference.ELLA().to(dtype).eval()
        unet = UNet2DConditionModel(**SD15_UNET).to(dtype).eval()
        vae = AutoencoderKL(**SD15_VAE).to(dtype).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(FIXTURES / "t5"))
    proxy = ELLAProxyUNet(ella, unet)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=proxy,
        scheduler=DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.synchronize()
    print(f"{name}: random weights made in {time.perf_counter() - start:.1f} s", flush=True)

    def encode():
        enc = tokenizer(["", PROMPT], padding="max_length", max_length=128, truncation=True,
                        return_tensors="pt").to("cuda")
        states = t5(**enc).last_hidden_state.to(dtype)
        return states[:1], states[1:]

    def sample(states, on_step=None):
        proxy.conditions.clear()  # the proxy keeps every condition for the fixtures
        negative, positive = states
        return pipe(prompt_embeds=positive, negative_prompt_embeds=negative, guidance_scale=7.5,
                    num_inference_steps=STEPS, height=512, width=512, output_type="np",
                    generator=torch.Generator("cuda").manual_seed(1000),
                    callback_on_step_end=on_step).images

    def measure(label, run):
        with torch.inference_mode():
            run()  # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            device_peak.reset()
            seconds = []
            for _ in range(images):
                t0 = time.perf_counter()
                run()
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
            stamps = []

            def on_step(pipe_, i, t, kwargs):
                torch.cuda.synchronize()
                stamps.append(time.perf_counter())
                return kwargs

            run(on_step)
        median = sorted(seconds)[len(seconds) // 2]
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        reserved = torch.cuda.max_memory_reserved() / 2**30
        print(f"RESULT {name} {label}: {median:.3f} s/image, {per_step * 1e3:.1f} ms/step, "
              f"peak {device_peak.gib():.2f} GiB (torch reserved {reserved:.2f})", flush=True)

    measure("T5 resident", lambda on_step=None: sample(encode(), on_step))
    with torch.inference_mode():
        states = encode()
    del t5
    torch.cuda.empty_cache()
    measure("T5 freed", lambda on_step=None: sample(states, on_step))


if __name__ == "__main__":
    main()
