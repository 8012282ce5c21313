//! diffusers' PEFT LoRA files: the adapter configs diffusers stores in the safetensors header
//! (`lora_adapter_metadata`, docs/lora-kinds-reference.md §6), whose `alpha_pattern` and
//! `rank_pattern` give single modules their own α and rank, read as peft reads them.

use std::fmt;
use std::marker::PhantomData;

use regex::Regex;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// `lora_adapter_metadata`: one flat JSON object, `{"unet.r": 4, "unet.alpha_pattern": {…},
/// "text_encoder.lora_alpha": 8, …}`, the U-Net's and the text encoder's `LoraConfig`.
#[derive(Debug, Default)]
pub(crate) struct AdapterMetadata {
    pub unet: PeftConfig,
    pub text_encoder: PeftConfig,
}

/// One model's peft `LoraConfig`: the fields that decide a module's update. A file without
/// metadata has the default: α = r for every module.
#[derive(Debug, Default)]
pub(crate) struct PeftConfig {
    r: Option<usize>,
    lora_alpha: Option<f32>,
    /// Per-module α and rank.
    alpha_pattern: Patterns<f32>,
    rank_pattern: Patterns<usize>,
    use_rslora: bool,
    use_dora: bool,
    lora_bias: bool,
}

impl PeftConfig {
    /// The scale of the module at `path` (the file key without `unet.` / `text_encoder.` and
    /// the part) whose `lora_A` has `rank` rows: `α / r`, or `α / √r` with rsLoRA. α is the
    /// module's `alpha` tensor when the file has one, else `alpha_pattern`'s first match, else
    /// `lora_alpha`, else the rank. The error (a reason) when the config says the module has
    /// another rank, or is DoRA's or `lora_bias`' (no `W + ΔW` merge).
    pub(crate) fn scale(&self, path: &str, rank: usize, alpha: Option<f32>) -> Result<f32, String> {
        if self.use_dora {
            return Err(
                "DoRA (`use_dora` in its adapter config), which ella does not merge".into(),
            );
        }
        if self.lora_bias {
            return Err("trained with `lora_bias` (biases too), which ella does not merge".into());
        }
        if let Some(expected) = self.rank_pattern.first_match(path).or(self.r)
            && expected != rank
        {
            return Err(format!(
                "of rank {rank}, where its adapter config says {expected}"
            ));
        }
        let alpha = alpha
            .or_else(|| self.alpha_pattern.first_match(path))
            .or(self.lora_alpha)
            .unwrap_or(rank as f32);
        Ok(match self.use_rslora {
            true => alpha / (rank as f32).sqrt(),
            false => alpha / rank as f32,
        })
    }
}

/// A pattern key as peft matches it: a regular expression that must match the end of the
/// module path from the start of a `.`-separated segment (Python's
/// `re.match(rf"(.*\.)?({key})$", path)`): `to_k` matches `….attn1.to_k`, not `….xto_k`.
fn pattern(key: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

impl<'de> Deserialize<'de> for AdapterMetadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MetadataVisitor)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = AdapterMetadata;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("diffusers' adapter metadata, a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut metadata = AdapterMetadata::default();
        while let Some(key) = map.next_key::<String>()? {
            let (config, field) = match key.split_once('.') {
                Some(("unet", field)) => (&mut metadata.unet, field),
                Some(("text_encoder", field)) => (&mut metadata.text_encoder, field),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            match field {
                "r" => config.r = map.next_value()?,
                "lora_alpha" => config.lora_alpha = map.next_value()?,
                "alpha_pattern" => {
                    config.alpha_pattern = map.next_value::<Option<_>>()?.unwrap_or_default();
                }
                "rank_pattern" => {
                    config.rank_pattern = map.next_value::<Option<_>>()?.unwrap_or_default();
                }
                "use_rslora" => config.use_rslora = flag(map.next_value()?),
                "use_dora" => config.use_dora = flag(map.next_value()?),
                "lora_bias" => config.lora_bias = flag(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(metadata)
    }
}

/// A boolean field, `null` for false.
fn flag(value: Option<bool>) -> bool {
    value.unwrap_or(false)
}

/// A pattern object (`{"to_k": 16, …}`) with its keys compiled, in the file's order:
/// peft takes the first pattern that matches (`serde_json`'s maps would sort the keys).
#[derive(Debug, Default)]
struct Patterns<T>(Vec<(Regex, T)>);

impl<T: Copy> Patterns<T> {
    /// The value of the first pattern that matches `path` (peft's `get_pattern_key`).
    fn first_match(&self, path: &str) -> Option<T> {
        self.0
            .iter()
            .find(|(pattern, _)| pattern.is_match(path))
            .map(|&(_, value)| value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patterns<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PatternsVisitor(PhantomData))
    }
}

struct PatternsVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for PatternsVisitor<T> {
    type Value = Patterns<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of patterns")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut patterns = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, T>()? {
            match pattern(&key) {
                Ok(regex) => patterns.push((regex, value)),
                Err(e) => return Err(serde::de::Error::custom(format!("pattern `{key}`: {e}"))),
            }
        }
        Ok(Patterns(patterns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// peft's rule on the fixture's patterns (docs/lora-kinds-reference.md §6): keys are
    /// regexes matched at the end of the path on a `.` boundary, the first match wins.
    #[test]
    fn patterns_match_as_peft_matches_them() {
        let metadata: AdapterMetadata = serde_json::from_str(
            r#"{"unet.alpha_pattern":
                    {"attn2.to_k": 2, "resnets\\.0\\.conv_shortcut": 1, "to_k": 16},
                "unet.lora_alpha": 4, "unet.r": 4, "unet.peft_type": "LORA",
                "unet.rank_pattern": {"up_blocks\\.\\d\\.resnets\\.[12]\\.conv_shortcut": 3},
                "text_encoder.use_rslora": true, "text_encoder.lora_alpha": 8}"#,
        )
        .unwrap();
        let unet = &metadata.unet;
        let block = "down_blocks.0.attentions.0.transformer_blocks.0";
        for (path, rank, scale) in [
            (format!("{block}.attn2.to_k"), 4, 2.0 / 4.0),
            (format!("{block}.attn1.to_k"), 4, 16.0 / 4.0),
            (format!("{block}.attn1.to_q"), 4, 4.0 / 4.0),
            (format!("{block}.attn1.xto_k"), 4, 4.0 / 4.0),
            ("up_blocks.1.resnets.0.conv_shortcut".into(), 4, 1.0 / 4.0),
            ("up_blocks.0.resnets.2.conv_shortcut".into(), 3, 4.0 / 3.0),
        ] {
            assert_eq!(unet.scale(&path, rank, None), Ok(scale), "{path}");
        }
        assert!(
            unet.scale("up_blocks.0.resnets.2.conv_shortcut", 4, None)
                .is_err()
        );
        assert_eq!(
            unet.scale(&format!("{block}.attn1.to_k"), 4, Some(8.0)),
            Ok(2.0)
        );
        let fc1 = "encoder.layers.0.mlp.fc1";
        assert_eq!(metadata.text_encoder.scale(fc1, 4, None), Ok(8.0 / 2.0));
    }
}
