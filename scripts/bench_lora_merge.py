"""What merging each LoRA kind costs at SD1.5's size, measured with ella's CLI.

Writes, under OUT (default /tmp/ella-lora-bench): an SD1.5-sized diffusers folder with random
weights (U-Net, VAE, CLIP text encoder; the tiny tokenizer and scheduler of the fixtures,
which do not change the merge) and three kohya-named files that touch every linear and
convolution weight of the U-Net, rank 16:

- `lora.safetensors`: LoRA / LoCon (`lora_down`, `lora_up`, `alpha`);
- `loha.safetensors`: LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`);
- `lokr.safetensors`: LyCORIS LoKr, factor 8 (`lokr_w1` whole, `lokr_w2_a` @ `lokr_w2_b`).

Then runs `target/<profile>/examples/generate` with each (CLIP conditioning, one 64×64 step)
and prints the merge time the CLI reports ("merged in …"). Build the CLI first, e.g.
`cargo build --release --example generate`.

    python3 scripts/bench_lora_merge.py [--out DIR] [--profile release|debug] [--threads N]
"""

import argparse
import pathlib
import re
import shutil
import subprocess

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.numpy import save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "ella-core/tests/fixtures"
RANK = 16
FACTOR = 8


def write_models(sd: pathlib.Path) -> dict:
    """SD1.5's configs with random weights (F16 files); the U-Net's weight shapes by name."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    unet.half().save_pretrained(sd / "unet")
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vae.half().save_pretrained(sd / "vae")
    clip = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="quick_gelu",
        )
    )
    clip.half().save_pretrained(sd / "text_encoder")
    for folder in ("tokenizer", "scheduler"):
        shutil.copytree(FIXTURES / "sd" / folder, sd / folder, dirs_exist_ok=True)
    return {
        name[: -len(".weight")]: tuple(p.shape)
        for name, p in unet.state_dict().items()
        if name.endswith(".weight") and p.dim() in (2, 4)
    }


def write_loras(out: pathlib.Path, shapes: dict) -> None:
    rng = np.random.default_rng(0)

    def random(*shape):
        return (rng.standard_normal(shape) * 0.01).astype(np.float16)

    lora, loha, lokr = {}, {}, {}
    for module, shape in shapes.items():
        name = "lora_unet_" + module.replace(".", "_")
        out_ch, fan_in = shape[0], int(np.prod(shape[1:]))
        kernel = shape[2:]
        alpha = np.array(RANK / 2, dtype=np.float16)
        lora[f"{name}.lora_down.weight"] = random(RANK, shape[1], *kernel)
        lora[f"{name}.lora_up.weight"] = random(out_ch, RANK, *([1] * len(kernel)))
        lora[f"{name}.alpha"] = alpha
        for w in ("w1", "w2"):
            loha[f"{name}.hada_{w}_a"] = random(out_ch, RANK)
            loha[f"{name}.hada_{w}_b"] = random(RANK, fan_in)
        loha[f"{name}.alpha"] = alpha
        if out_ch % FACTOR == 0 and shape[1] % FACTOR == 0:
            lokr[f"{name}.lokr_w1"] = random(FACTOR, FACTOR)
            lokr[f"{name}.lokr_w2_a"] = random(out_ch // FACTOR, RANK)
            lokr[f"{name}.lokr_w2_b"] = random(RANK, fan_in // FACTOR)
            lokr[f"{name}.alpha"] = alpha
    for file, tensors in (("lora", lora), ("loha", loha), ("lokr", lokr)):
        save_file(tensors, str(out / f"{file}.safetensors"))
        modules = len({k.split(".")[0] for k in tensors})
        print(f"{file}: {modules} modules")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/ella-lora-bench")
    parser.add_argument("--profile", default="release")
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    sd = out / "sd15"
    if not (sd / "unet").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_loras(out, write_models(sd))
    cli = ROOT / "target" / args.profile / "examples" / "generate"
    for file in ("lora", "loha", "lokr"):
        run = subprocess.run(
            [str(cli), "--sd", str(sd), "--conditioning", "clip", "--offline",
             "--threads", args.threads, "--lora", str(out / f"{file}.safetensors"),
             "--width", "64", "--height", "64", "--steps", "1", "--out", str(out / "x.png")],
            capture_output=True, text=True, check=True,
        )
        merged = re.search(r"LoRAs change (\d+) weights \(merged in ([^)]+)\)", run.stderr)
        print(f"{file}: {merged.group(1)} weights merged in {merged.group(2)}")


if __name__ == "__main__":
    main()
