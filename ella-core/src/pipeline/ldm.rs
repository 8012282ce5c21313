//! The original Latent Diffusion (CompVis) key layout of single-file SD checkpoints — the
//! `.safetensors` files A1111, ComfyUI and CivitAI use — mapped to the diffusers names our
//! loaders read. One file holds the three models under three prefixes:
//!
//! | prefix | model | layout |
//! |---|---|---|
//! | `model.diffusion_model.` | U-Net | `input_blocks.K.P`, `middle_block.P`, `output_blocks.K.P` |
//! | `first_stage_model.` | VAE | `encoder.down.I.block.J`, `decoder.up.I.block.J`, `mid.attn_1` (1×1 convs) |
//! | `cond_stage_model.transformer.` | CLIP text model | transformers' names |
//!
//! ControlNets in the same layout come as files of their own (lllyasviel's ControlNet 1.0/1.1,
//! comfyanonymous' fp16 conversions): the U-Net's `time_embed`, `input_blocks` and
//! `middle_block`, plus `input_hint_block`, `zero_convs` and `middle_block_out`, under
//! `control_model.` or no prefix.
//!
//! Everything else in such a file (EMA copies, `alphas_cumprod`, optimizer state) is left out
//! of the views. The mapping is checked against diffusers' own single-file loader by
//! `scripts/single_file_fixtures.py`.

use crate::controlnet::ControlNetConfig;
use crate::error::{Error, Result};
use crate::unet::UNetConfig;
use crate::unet::ldm_names::{UNetLayout, split_index};
use crate::weights::Checkpoint;

/// The U-Net's prefix in a single-file checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// The VAE's prefix in a single-file checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// The CLIP text model's prefix in an SD1.x single-file checkpoint.
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// The ControlNet's prefix in ControlNet 1.0/1.1 files; some conversions store the same names
/// without it.
pub const CONTROLNET_PREFIX: &str = "control_model.";

/// The input channels of a single-file checkpoint's U-Net (4, or 9 for an inpainting model),
/// from its first convolution.
pub fn unet_in_channels(checkpoint: &Checkpoint) -> Option<usize> {
    checkpoint
        .shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))
        .and_then(|shape| shape.get(1).copied())
}

/// Errors unless `checkpoint` is an SD1.x single-file checkpoint; SD2.x and SDXL files are
/// recognised and refused by name, since their U-Nets and text encoders differ.
pub fn check_sd1(checkpoint: &Checkpoint) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::UnsupportedModel {
            path: checkpoint.path().to_path_buf(),
            reason: reason.into(),
        })
    };
    let has_prefix = |prefix: &str| checkpoint.names().any(|n| n.starts_with(prefix));
    if has_prefix("conditioner.embedders.")
        || checkpoint
            .shape("model.diffusion_model.label_emb.0.0.weight")
            .is_some()
    {
        return refuse(
            "an SDXL checkpoint; ella runs SD1.x models (ELLA was released for SD1.5 only)",
        );
    }
    let context_width = checkpoint
        .shape("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        .and_then(|shape| shape.get(1).copied());
    if has_prefix("cond_stage_model.model.") || context_width == Some(1024) {
        return refuse(
            "an SD2.x checkpoint (OpenCLIP text encoder, 1024-wide cross-attention); ella runs \
             SD1.x models",
        );
    }
    if !has_prefix(UNET_PREFIX) {
        return refuse(
            "not a single-file SD checkpoint: it has no `model.diffusion_model.*` tensors (pass a \
             diffusers folder as a folder; LoRA and VAE files have their own options)",
        );
    }
    Ok(())
}

/// The U-Net of a single-file checkpoint under diffusers' `UNet2DConditionModel` names.
/// `config` says how many resnets each level has and which up blocks have attention, which
/// the LDM numbering depends on.
pub fn unet(checkpoint: &Checkpoint, config: &UNetConfig) -> Checkpoint {
    let layout = UNetLayout::of_config(config);
    checkpoint.remap(|name| {
        let rest = name.strip_prefix(UNET_PREFIX)?;
        Some(
            layout
                .to_diffusers(rest)
                .unwrap_or_else(|| name.to_string()),
        )
    })
}

/// Whether a VAE file is in the LDM layout (a standalone VAE such as
/// `vae-ft-mse-840000-ema-pruned.safetensors`, or a whole single-file checkpoint) rather
/// than diffusers'.
pub fn is_ldm_vae(checkpoint: &Checkpoint) -> bool {
    checkpoint
        .names()
        .any(|n| n.starts_with("decoder.up.") || n.starts_with(VAE_PREFIX))
}

/// The VAE of an LDM-layout file under diffusers' `AutoencoderKL` names: the tensors under
/// `first_stage_model.` in a single-file checkpoint, or every tensor of a standalone VAE
/// file. `levels` is the number of resolution levels (`block_out_channels.len()`): the LDM
/// decoder numbers its levels from the bottom, diffusers' from the top.
pub fn vae(checkpoint: &Checkpoint, levels: usize) -> Checkpoint {
    let single_file = checkpoint.names().any(|n| n.starts_with(VAE_PREFIX));
    let mut view = checkpoint.remap(|name| {
        let name = match single_file {
            true => name.strip_prefix(VAE_PREFIX)?,
            false => name,
        };
        Some(vae_name(name, levels).unwrap_or_else(|| name.to_string()))
    });
    for coder in ["encoder", "decoder"] {
        for projection in ["to_q", "to_k", "to_v", "to_out.0"] {
            let name = format!("{coder}.mid_block.attentions.0.{projection}.weight");
            view.squeeze_trailing_ones(&name, 2);
        }
    }
    view
}

/// One LDM VAE name → diffusers', or `None` for names that are the same in both
/// (`quant_conv`, `conv_in`, …) or unknown.
fn vae_name(name: &str, levels: usize) -> Option<String> {
    let (coder, rest) = name.split_once('.')?;
    let (block, rest) = rest.split_once('.')?;
    let shortcut = |rest: &str| match rest.strip_prefix("nin_shortcut.") {
        Some(tail) => format!("conv_shortcut.{tail}"),
        None => rest.to_string(),
    };
    match block {
        "norm_out" => Some(format!("{coder}.conv_norm_out.{rest}")),
        "mid" => {
            let (part, rest) = rest.split_once('.')?;
            match part {
                "block_1" => Some(format!("{coder}.mid_block.resnets.0.{}", shortcut(rest))),
                "block_2" => Some(format!("{coder}.mid_block.resnets.1.{}", shortcut(rest))),
                "attn_1" => {
                    let (projection, tail) = rest.split_once('.')?;
                    let projection = match projection {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        "proj_out" => "to_out.0",
                        _ => return None,
                    };
                    Some(format!(
                        "{coder}.mid_block.attentions.0.{projection}.{tail}"
                    ))
                }
                _ => None,
            }
        }
        "down" | "up" => {
            let (level, rest) = split_index(rest)?;
            let (kind, rest) = rest.split_once('.')?;
            let (blocks, level) = match block {
                "down" => ("down_blocks", level),
                _ => ("up_blocks", levels.checked_sub(level + 1)?),
            };
            match kind {
                "block" => {
                    let (j, rest) = split_index(rest)?;
                    Some(format!(
                        "{coder}.{blocks}.{level}.resnets.{j}.{}",
                        shortcut(rest)
                    ))
                }
                "downsample" => Some(format!("{coder}.{blocks}.{level}.downsamplers.0.{rest}")),
                "upsample" => Some(format!("{coder}.{blocks}.{level}.upsamplers.0.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a ControlNet file is in the original layout (its hint encoder and zero
/// convolutions under LDM names), with or without the `control_model.` prefix.
pub fn is_ldm_controlnet(checkpoint: &Checkpoint) -> bool {
    checkpoint.names().any(|name| {
        let name = name.strip_prefix(CONTROLNET_PREFIX).unwrap_or(name);
        name.starts_with("input_hint_block.") || name.starts_with("zero_convs.")
    })
}

/// The `control_model.` prefix if the ControlNet file uses it, else none.
fn controlnet_prefix(checkpoint: &Checkpoint) -> &'static str {
    match checkpoint.names().any(|n| n.starts_with(CONTROLNET_PREFIX)) {
        true => CONTROLNET_PREFIX,
        false => "",
    }
}

/// The convolutions of an original-layout ControlNet's `input_hint_block` (conv, SiLU, conv,
/// SiLU, …: at even indices), as `(index, weight shape)` in index order.
fn hint_convs(checkpoint: &Checkpoint) -> Vec<(usize, &[usize])> {
    let prefix = format!("{}input_hint_block.", controlnet_prefix(checkpoint));
    let mut convs: Vec<(usize, &[usize])> = checkpoint
        .names()
        .filter_map(|name| {
            let index = name.strip_prefix(&prefix)?.strip_suffix(".weight")?;
            Some((index.parse().ok()?, checkpoint.shape(name)?))
        })
        .collect();
    convs.sort_by_key(|&(index, _)| index);
    convs
}

/// The config of an original-layout ControlNet, which carries none: its down path is the
/// U-Net's it controls (`unet`), its hint encoder's widths are read from the file.
pub fn controlnet_config(checkpoint: &Checkpoint, unet: &UNetConfig) -> Result<ControlNetConfig> {
    let convs = hint_convs(checkpoint);
    // conv_in at 0, (conv, stride-2 conv) pairs at 2, 4, …, and conv_out last: at 14 in
    // every original file whatever the pairs (diffusers reads it there), at the next even
    // index in some conversions.
    let widths = match convs.as_slice() {
        [(0, conv_in), blocks @ .., (_, conv_out)]
            if conv_in.len() == 4
                && conv_out.len() == 4
                && blocks.len() % 2 == 0
                && blocks
                    .iter()
                    .enumerate()
                    .all(|(k, &(i, shape))| i == 2 * (k + 1) && shape.len() == 4) =>
        {
            let mut widths = vec![conv_in[0]];
            widths.extend(blocks.iter().skip(1).step_by(2).map(|(_, shape)| shape[0]));
            Some((conv_in[1], widths))
        }
        _ => None,
    };
    let Some((conditioning_channels, widths)) = widths else {
        return Err(Error::UnsupportedModel {
            path: checkpoint.path().to_path_buf(),
            reason: "not a ControlNet in the original layout: its `input_hint_block` \
                     convolutions are missing, misnumbered or misshaped"
                .into(),
        });
    };
    let mut config = ControlNetConfig::for_unet(unet, conditioning_channels, widths);
    // The shuffle ControlNet (`control_v11e_sd15_shuffle`) pools its residuals globally, which
    // its weights do not show: its name does.
    let name = checkpoint.path().file_name().unwrap_or_default();
    config.global_pool_conditions = name.to_string_lossy().contains("shuffle");
    crate::weights::check_config(config.validate(), checkpoint.path())?;
    Ok(config)
}

/// An original-layout ControlNet under diffusers' `ControlNetModel` names. In a file with the
/// `control_model.` prefix, the tensors outside it (the SD model ControlNet 1.0 files bundle)
/// are left out.
pub fn controlnet(checkpoint: &Checkpoint, config: &ControlNetConfig) -> Checkpoint {
    let layout = UNetLayout::of_down_path(&config.unet);
    let hint_out = hint_convs(checkpoint).last().map_or(0, |&(index, _)| index);
    let prefix = controlnet_prefix(checkpoint);
    checkpoint.remap(|name| {
        let name = name.strip_prefix(prefix)?;
        Some(controlnet_name(name, &layout, hint_out).unwrap_or_else(|| name.to_string()))
    })
}

/// One LDM ControlNet name (without the prefix) → diffusers', or `None` when it is not one.
/// The hint encoder's last convolution is at index `hint_out`.
fn controlnet_name(name: &str, layout: &UNetLayout, hint_out: usize) -> Option<String> {
    if let Some(rest) = name.strip_prefix("zero_convs.") {
        let (i, rest) = split_index(rest)?;
        return Some(format!(
            "controlnet_down_blocks.{i}.{}",
            rest.strip_prefix("0.")?
        ));
    }
    if let Some(rest) = name.strip_prefix("middle_block_out.0.") {
        return Some(format!("controlnet_mid_block.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("input_hint_block.") {
        let (i, rest) = split_index(rest)?;
        let conv = match i {
            _ if i % 2 == 1 || i > hint_out => return None,
            0 => "conv_in".to_string(),
            _ if i == hint_out => "conv_out".to_string(),
            _ => format!("blocks.{}", i / 2 - 1),
        };
        return Some(format!("controlnet_cond_embedding.{conv}.{rest}"));
    }
    layout.to_diffusers(name)
}

/// The CLIP text model of a single-file SD1.x checkpoint, under transformers' names.
pub fn clip(checkpoint: &Checkpoint) -> Checkpoint {
    checkpoint.remap(|name| name.strip_prefix(CLIP_PREFIX).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_controlnet_names() {
        let layout = UNetLayout::of_down_path(&UNetConfig::sd15());
        let cases = [
            (
                "input_hint_block.0.weight",
                "controlnet_cond_embedding.conv_in.weight",
            ),
            (
                "input_hint_block.2.bias",
                "controlnet_cond_embedding.blocks.0.bias",
            ),
            (
                "input_hint_block.12.weight",
                "controlnet_cond_embedding.blocks.5.weight",
            ),
            (
                "input_hint_block.14.weight",
                "controlnet_cond_embedding.conv_out.weight",
            ),
            ("zero_convs.11.0.bias", "controlnet_down_blocks.11.bias"),
            ("middle_block_out.0.weight", "controlnet_mid_block.weight"),
            (
                "input_blocks.1.1.proj_in.weight",
                "down_blocks.0.attentions.0.proj_in.weight",
            ),
            ("time_embed.0.bias", "time_embedding.linear_1.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                controlnet_name(ldm, &layout, 14).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        for unknown in [
            "input_hint_block.1.weight",
            "input_hint_block.16.weight",
            "output_blocks.0.0.in_layers.0.weight",
        ] {
            assert_eq!(controlnet_name(unknown, &layout, 14), None, "{unknown}");
        }
    }

    #[test]
    fn sd15_vae_names() {
        let cases = [
            (
                "decoder.up.3.block.0.nin_shortcut.weight",
                "decoder.up_blocks.0.resnets.0.conv_shortcut.weight",
            ),
            (
                "decoder.up.1.upsample.conv.bias",
                "decoder.up_blocks.2.upsamplers.0.conv.bias",
            ),
            (
                "encoder.down.2.downsample.conv.weight",
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
            ),
            (
                "encoder.mid.attn_1.proj_out.bias",
                "encoder.mid_block.attentions.0.to_out.0.bias",
            ),
            (
                "decoder.mid.block_2.norm1.weight",
                "decoder.mid_block.resnets.1.norm1.weight",
            ),
            ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(vae_name(ldm, 4).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(vae_name("post_quant_conv.weight", 4), None);
    }
}
