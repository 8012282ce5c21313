"""Few-step sampling references for make_fixtures.py: diffusers' LCMScheduler and
TCDScheduler, configured from SD1.5's scheduler config as `from_config` does. Writes:

  reference/schedulers_consistency.json         timesteps per step count, per variant
  reference/schedulers_consistency.safetensors  four steps with fixed model outputs and noise
  reference/pipeline_{lcm,tcd}_*.safetensors    samplings with the tiny models, with and
                                                without classifier-free guidance (added to
                                                reference/pipelines.json)
  lora/lcm-lora-kohya.safetensors, lora/tcd-lora-peft.safetensors, reference/lora_few_step.safetensors
                                                an LCM-LoRA (kohya) and a TCD-LoRA (PEFT) and
                                                the U-Net's output with each merged

Both schedulers draw fresh noise after every step but the last (`randn_tensor`); the noise
is recorded and saved (`noise{i}`, `step_noise{i}`), so that ella can be given the same.
"""

import json

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from diffusers import LCMScheduler, StableDiffusionPipeline, TCDScheduler
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_tcd as tcd_module
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer
from sd_fixtures import SD15_SCHEDULER_CONFIG, load_tiny_models, run_clip_pipeline, run_pipeline

CLASSES = {"lcm": LCMScheduler, "tcd": TCDScheduler}


class RecordedNoise:
    """Stands in for diffusers' `randn_tensor` in the scheduler modules: draws from its own
    generator and keeps every tensor it hands out, in order."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = []

    def __call__(self, shape, generator=None, device=None, dtype=None):
        noise = torch.randn(shape, generator=self.generator)
        self.drawn.append(noise.clone())
        return noise.to(dtype=dtype)

    def install(self):
        lcm_module.randn_tensor = self
        tcd_module.randn_tensor = self
        return self


def make_scheduler(name, overrides=None):
    return CLASSES[name].from_config({**SD15_SCHEDULER_CONFIG, **(overrides or {})})


def scheduler_fixtures(out):
    """Timesteps for several step counts, and four steps with fixed model outputs and
    recorded noise, for each variant."""
    gen = torch.Generator().manual_seed(23)
    sample = torch.randn(1, 4, 4, 4, generator=gen)
    outputs = [torch.randn(1, 4, 4, 4, generator=gen) for _ in range(4)]
    tensors = {"step.sample": sample}
    for i, o in enumerate(outputs):
        tensors[f"step.model_output{i}"] = o
    variants = [
        ("lcm", {}, {}),
        ("lcm", {"prediction_type": "v_prediction"}, {}),
        ("lcm", {"original_inference_steps": 20, "timestep_scaling": 5.0}, {}),
        ("lcm", {"clip_sample": True, "clip_sample_range": 0.5}, {}),
        ("tcd", {}, {"eta": 0.3}),
        ("tcd", {}, {"eta": 0.0}),
        ("tcd", {}, {"eta": 1.0}),
        ("tcd", {"prediction_type": "v_prediction"}, {"eta": 0.5}),
        ("tcd", {"prediction_type": "sample"}, {"eta": 0.3}),
    ]
    cases = {}
    for name, overrides, step_args in variants:
        key = name + "".join(f"/{k}={v}" for k, v in {**overrides, **step_args}.items())
        case = {"scheduler": name, "overrides": overrides, "eta": step_args.get("eta"), "steps": {}}
        for steps in [1, 2, 4, 8, 20]:
            s = make_scheduler(name, overrides)
            s.set_timesteps(steps)
            case["steps"][str(steps)] = s.timesteps.tolist()
        s = make_scheduler(name, overrides)
        s.set_timesteps(4)
        noise = RecordedNoise(24).install()
        x = sample.clone()
        for i, t in enumerate(s.timesteps):
            x = s.step(outputs[i], t, x, **step_args).prev_sample
            tensors[f"{key}.prev{i}"] = x
        for i, drawn in enumerate(noise.drawn):
            tensors[f"{key}.noise{i}"] = drawn
        case["noise_draws"] = len(noise.drawn)
        cases[key] = case
    (out / "reference" / "schedulers_consistency.json").write_text(json.dumps(cases, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(out / "reference" / "schedulers_consistency.safetensors"))


def add_step_noise(out, name, noise):
    path = out / "reference" / f"pipeline_{name}.safetensors"
    tensors = load_file(str(path))
    for i, drawn in enumerate(noise.drawn):
        tensors[f"step_noise{i}"] = drawn
    save_file(tensors, str(path))


def make_few_step(out, ella_config):
    scheduler_fixtures(out)
    make_few_step_loras(out)
    sd = out / "sd"
    unet, vae, t5, tokenizer, ella = load_tiny_models(out, ella_config)
    text_encoder = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    clip_tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(61))
    prompt = "a red book on a wooden table"
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    # (name, guidance, eta): LCM-LoRA users sample at guidance 1 (no CFG) to 2; TCD at 1 with
    # its eta 0.3.
    for name, guidance, eta in [("lcm_ella", 1.0, None), ("lcm_ella-cfg", 1.8, None),
                                ("tcd_ella", 1.0, 0.3), ("tcd_ella-cfg", 2.5, 0.5)]:
        scheduler = make_scheduler(name.split("_")[0])
        noise = RecordedNoise(62).install()
        extra = {} if eta is None else {"eta": eta}
        runs[name] = run_pipeline(out, name, t5, tokenizer, ella, unet, vae, scheduler, "flexible", prompt, "",
                                  guidance, latents, extra=extra)
        runs[name].update(extra)
        add_step_noise(out, name, noise)
    for name, guidance, eta in [("tcd_clip", 1.0, 0.3), ("lcm_clip-cfg", 2.0, None)]:
        noise = RecordedNoise(63).install()
        extra = {} if eta is None else {"eta": eta}
        runs[name] = run_clip_pipeline(out, name, text_encoder, clip_tokenizer, unet, vae,
                                       make_scheduler(name.split("_")[0]), prompt, "a blue cup", guidance,
                                       latents, **extra)
        runs[name].update(extra)
        add_step_noise(out, name, noise)
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")


# The modules LCM-LoRA and TCD-LoRA train (diffusers' `train_lcm_distill_lora_sd_wds.py`):
# attention, feed-forward, the transformers' projections, and every resnet and resampler
# convolution and time projection.
DISTILL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                   "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
                   "time_emb_proj"]


def distill_modules(unet):
    return [name for name, module in unet.named_modules()
            if any(name.endswith(t) for t in DISTILL_TARGETS) and hasattr(module, "weight")]


def make_few_step_loras(out):
    """An LCM-LoRA in kohya's format (as latent-consistency/lcm-lora-sdv1-5 ships it: kohya
    keys on diffusers' module names, alpha per module) and a TCD-LoRA in diffusers' PEFT
    format (as h1t/TCD-SD15 ships it), over every module the distillation trains, and the
    U-Net's output with each merged: the kohya one with kohya's formula, the PEFT one by
    diffusers' `load_lora_weights` + `fuse_lora`."""
    import lora_fixtures

    folder = out / "lora"
    gen = torch.Generator().manual_seed(95)
    pipe = lora_fixtures.pipeline(out)
    state, merged = {}, lora_fixtures.pipeline(out)
    for name in distill_modules(pipe.unet):
        weight = pipe.unet.get_submodule(name).weight
        rank, alpha = 4, 2.0
        if weight.dim() == 4:
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * 0.1
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
        state[f"{key}.alpha"] = torch.tensor(alpha)
        with torch.no_grad():
            target = merged.unet.get_submodule(name).weight
            target += alpha / rank * (up.flatten(1) @ down.flatten(1)).reshape(target.shape)
    save_file(state, str(folder / "lcm-lora-kohya.safetensors"))

    sd_ref = load_file(str(out / "reference" / "sd.safetensors"))
    clip_ref = load_file(str(out / "reference" / "clip.safetensors"))
    inputs = (sd_ref["unet.sample"], sd_ref["unet.cond"], clip_ref["input_ids"].long())
    ref = {"lcm-kohya.unet": lora_fixtures.outputs(merged, inputs)[0]}

    pipe = lora_fixtures.pipeline(out)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=DISTILL_TARGETS)
    pipe.unet.add_adapter(config)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=get_peft_model_state_dict(pipe.unet), weight_name="tcd-lora-peft.safetensors",
        safe_serialization=True)
    fused = lora_fixtures.pipeline(out)
    fused.load_lora_weights(str(folder / "tcd-lora-peft.safetensors"), adapter_name="tcd")
    fused.fuse_lora(lora_scale=1.0)
    ref["tcd-peft.unet"] = lora_fixtures.outputs(fused, inputs)[0]
    base = lora_fixtures.outputs(lora_fixtures.pipeline(out), inputs)[0]
    for key, value in ref.items():
        change = (value - base).abs().max().item()
        assert change > 1e-2, f"{key}: the LoRA barely changes the output ({change})"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "lora_few_step.safetensors"))
