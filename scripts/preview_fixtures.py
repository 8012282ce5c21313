"""Live-preview references for make_fixtures.py. Writes reference/previews.safetensors:

  {scheduler}.x0_{i}   the clean sample each scheduler predicts at step i of 6 (fixed model
                       outputs, those of reference/scheduler_steps.safetensors): DDIM's and
                       Euler's `pred_original_sample`, DPM-Solver++'s `convert_model_output`
  linear.latents, linear.image
                       ComfyUI's linear latent→RGB preview of SD1.5 latents
                       (`Latent2RGBPreviewer`: latent · latent_rgb_factors, [-1, 1] → [0, 255])
"""

import torch
from safetensors.torch import load_file, save_file

import sd_fixtures

# comfy/latent_formats.py, SD15.latent_rgb_factors (rows: latent channels; columns: R, G, B).
SD15_LATENT_RGB = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])


def make_previews(out):
    steps = load_file(str(out / "reference" / "scheduler_steps.safetensors"))
    ref = {}
    for name in ["ddim", "euler", "dpm++2m", "dpm++2m-karras"]:
        s = sd_fixtures.make_scheduler(name)
        s.set_timesteps(6)
        x = steps["step.sample"] * s.init_noise_sigma
        for i, t in enumerate(s.timesteps):
            output = steps[f"step.model_output{i}"]
            if name.startswith("dpm"):
                if s.step_index is None:
                    s._init_step_index(t)
                ref[f"{name}.x0_{i}"] = s.convert_model_output(output, sample=x)
                x = s.step(output, t, x).prev_sample
            else:
                result = s.step(output, t, x)
                ref[f"{name}.x0_{i}"] = result.pred_original_sample
                x = result.prev_sample
    latents = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(81)) * 1.5
    rgb = latents.permute(0, 2, 3, 1) @ SD15_LATENT_RGB
    ref["linear.latents"] = latents
    ref["linear.image"] = (((rgb + 1.0) / 2.0).clamp(0, 1) * 255.0).round().to(torch.uint8)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "previews.safetensors"))
