//! The U-Net's module names in the original Latent Diffusion (CompVis) layout and in
//! diffusers', as one table read both ways: single-file checkpoints and original-layout
//! ControlNets are renamed through it (LDM → diffusers, `pipeline::ldm`), and kohya LoRA files
//! that name U-Net modules the LDM way are matched through it (diffusers → LDM, `lora`).
//!
//! LDM numbers the blocks of all levels in one sequence: `input_blocks.K` holds down level
//! `i`'s resnet `j` (sub-block 0) and its attention (sub-block 1), then the level's
//! downsampler (`input_blocks.K.0.op`); `output_blocks.K` holds up level `i`'s resnet `j`, its
//! attention, and after the level's last resnet its upsampler (sub-block 1, or 2 where the
//! level has attention). docs/lora-kinds-reference.md §2 has the table for SD1.5.

use super::{UNetConfig, UpBlockType};

/// LDM `ResBlock` parameter names and diffusers' `ResnetBlock2D` ones.
const RESNET_NAMES: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// One block of the U-Net under both names, e.g. `input_blocks.1.0.` and
/// `down_blocks.0.resnets.0.`.
struct Block {
    ldm: String,
    diffusers: String,
    /// A resnet, whose parameter names differ too ([`RESNET_NAMES`]).
    resnet: bool,
}

impl Block {
    fn new(ldm: impl Into<String>, diffusers: impl Into<String>, resnet: bool) -> Self {
        Self {
            ldm: ldm.into(),
            diffusers: diffusers.into(),
            resnet,
        }
    }
}

/// Every block of one U-Net under its LDM and its diffusers name.
pub(crate) struct UNetLayout {
    blocks: Vec<Block>,
}

impl UNetLayout {
    /// The blocks of a U-Net with `down[i]` resnets on down level `i`, `up[i]` on up level
    /// `i` (one more than the down level it mirrors) and attention on up level `i` where
    /// `up_attention[i]`. Every level but the last has a downsampler (down) or an upsampler
    /// (up).
    pub(crate) fn new(down: &[usize], up: &[usize], up_attention: &[bool]) -> Self {
        let mut blocks = vec![
            Block::new("time_embed.0.", "time_embedding.linear_1.", false),
            Block::new("time_embed.2.", "time_embedding.linear_2.", false),
            Block::new("input_blocks.0.0.", "conv_in.", false),
            Block::new("out.0.", "conv_norm_out.", false),
            Block::new("out.2.", "conv_out.", false),
            Block::new("middle_block.0.", "mid_block.resnets.0.", true),
            Block::new("middle_block.1.", "mid_block.attentions.0.", false),
            Block::new("middle_block.2.", "mid_block.resnets.1.", true),
        ];
        let mut index = 1;
        for (i, &resnets) in down.iter().enumerate() {
            for j in 0..resnets {
                blocks.push(Block::new(
                    format!("input_blocks.{index}.0."),
                    format!("down_blocks.{i}.resnets.{j}."),
                    true,
                ));
                blocks.push(Block::new(
                    format!("input_blocks.{index}.1."),
                    format!("down_blocks.{i}.attentions.{j}."),
                    false,
                ));
                index += 1;
            }
            if i + 1 < down.len() {
                blocks.push(Block::new(
                    format!("input_blocks.{index}.0.op."),
                    format!("down_blocks.{i}.downsamplers.0.conv."),
                    false,
                ));
                index += 1;
            }
        }
        let mut index = 0;
        for (i, (&resnets, &attention)) in up.iter().zip(up_attention).enumerate() {
            for j in 0..resnets {
                blocks.push(Block::new(
                    format!("output_blocks.{index}.0."),
                    format!("up_blocks.{i}.resnets.{j}."),
                    true,
                ));
                if attention {
                    blocks.push(Block::new(
                        format!("output_blocks.{index}.1."),
                        format!("up_blocks.{i}.attentions.{j}."),
                        false,
                    ));
                }
                if j + 1 == resnets && i + 1 < up.len() {
                    let sub_block = if attention { 2 } else { 1 };
                    blocks.push(Block::new(
                        format!("output_blocks.{index}.{sub_block}."),
                        format!("up_blocks.{i}.upsamplers.0."),
                        false,
                    ));
                }
                index += 1;
            }
        }
        Self { blocks }
    }

    /// The layout of the U-Net `config` describes.
    pub(crate) fn of_config(config: &UNetConfig) -> Self {
        let down = down_resnets(config);
        // Up level `i` mirrors down level `n - 1 - i`, with one resnet more.
        let up: Vec<usize> = down.iter().rev().map(|resnets| resnets + 1).collect();
        let up_attention: Vec<bool> = config
            .up_block_types
            .iter()
            .map(|&kind| kind == UpBlockType::CrossAttention)
            .collect();
        Self::new(&down, &up, &up_attention)
    }

    /// The down path of the U-Net `config` describes, alone (a ControlNet's copy of it).
    pub(crate) fn of_down_path(config: &UNetConfig) -> Self {
        Self::new(&down_resnets(config), &[], &[])
    }

    /// One LDM U-Net name (without a checkpoint's prefix) → diffusers', or `None` when it is
    /// not one.
    pub(crate) fn to_diffusers(&self, ldm: &str) -> Option<String> {
        self.rename(ldm, true)
    }

    /// One diffusers U-Net name → LDM's, or `None` when it is not one.
    pub(crate) fn to_ldm(&self, diffusers: &str) -> Option<String> {
        self.rename(diffusers, false)
    }

    fn rename(&self, name: &str, to_diffusers: bool) -> Option<String> {
        self.blocks.iter().find_map(|block| {
            let (from, to) = oriented(&block.ldm, &block.diffusers, to_diffusers);
            let rest = name.strip_prefix(from)?;
            let rest = match block.resnet {
                true => RESNET_NAMES.iter().find_map(|&(ldm, diffusers)| {
                    let (head, new_head) = oriented(ldm, diffusers, to_diffusers);
                    Some(format!("{new_head}{}", rest.strip_prefix(head)?))
                })?,
                false => rest.to_string(),
            };
            Some(format!("{to}{rest}"))
        })
    }
}

/// An `(ldm, diffusers)` pair of names as `(from, to)` of a renaming in the direction
/// `to_diffusers` says.
fn oriented<'a>(ldm: &'a str, diffusers: &'a str, to_diffusers: bool) -> (&'a str, &'a str) {
    match to_diffusers {
        true => (ldm, diffusers),
        false => (diffusers, ldm),
    }
}

/// How many resnets each down level of the U-Net `config` describes has.
fn down_resnets(config: &UNetConfig) -> Vec<usize> {
    (0..config.block_out_channels.len())
        .map(|i| config.layers_per_block.get(i))
        .collect()
}

/// `"12.rest"` → `(12, "rest")`.
pub(crate) fn split_index(name: &str) -> Option<(usize, &str)> {
    let (index, rest) = name.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD1.5: 4 levels, 2 resnets per down level, no attention on up level 0.
    fn sd15() -> UNetLayout {
        UNetLayout::of_config(&UNetConfig::sd15())
    }

    #[test]
    fn sd15_unet_names() {
        let layout = sd15();
        let cases = [
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.2.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.emb_layers.1.weight",
                "down_blocks.3.resnets.1.time_emb_proj.weight",
            ),
            (
                "middle_block.2.out_layers.3.bias",
                "mid_block.resnets.1.conv2.bias",
            ),
            (
                "middle_block.1.proj_in.weight",
                "mid_block.attentions.0.proj_in.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.out_layers.0.weight",
                "up_blocks.3.resnets.2.norm2.weight",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                layout.to_diffusers(ldm).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
            assert_eq!(
                layout.to_ldm(diffusers).as_deref(),
                Some(ldm),
                "{diffusers}"
            );
        }
        assert_eq!(layout.to_diffusers("label_emb.0.0.weight"), None);
        assert_eq!(
            layout.to_diffusers("input_blocks.12.0.in_layers.0.weight"),
            None
        );
        assert_eq!(layout.to_ldm("down_blocks.4.resnets.0.conv1.weight"), None);
    }

    /// The examples of docs/lora-kinds-reference.md §2, as kohya spells them.
    #[test]
    fn kohya_ldm_examples() {
        let layout = sd15();
        let cases = [
            (
                "input_blocks_1_1_transformer_blocks_0_attn1_to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            ),
            ("middle_block_0_in_layers_2", "mid_block.resnets.0.conv1"),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks.1.resnets.0.conv_shortcut",
            ),
            (
                "output_blocks_3_0_emb_layers_1",
                "up_blocks.1.resnets.0.time_emb_proj",
            ),
            ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
            ("output_blocks_2_1_conv", "up_blocks.0.upsamplers.0.conv"),
            ("time_embed_0", "time_embedding.linear_1"),
            ("out_2", "conv_out"),
        ];
        for (kohya, diffusers) in cases {
            let ldm = layout.to_ldm(&format!("{diffusers}.weight")).unwrap();
            assert_eq!(
                ldm.replace('.', "_"),
                format!("{kohya}_weight"),
                "{diffusers}"
            );
        }
    }
}
