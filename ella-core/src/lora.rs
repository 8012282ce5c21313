//! LoRA: low-rank updates of the U-Net's and CLIP's weights, `W' = W + Σ scale · α/r · up·down`
//! (convolution kernels flattened), as kohya's sd-scripts and A1111 merge them. Two file
//! formats are read:
//!
//! - kohya / A1111: `lora_unet_{module}` and `lora_te_{module}` (the diffusers module path with
//!   `.` written `_`), each with `.lora_down.weight`, `.lora_up.weight` and `.alpha`;
//! - diffusers / PEFT: `unet.{module}.lora_A.weight` and `.lora_B.weight` (or the older
//!   `.lora.down.weight` / `.lora.up.weight`), `text_encoder.{module}…`; α from an `.alpha`
//!   tensor, else from the file's `lora_adapter_metadata` (`unet.lora_alpha`,
//!   `text_encoder.lora_alpha`), else `α = r`.
//!
//! The updates are applied to the loaded modules in place ([`apply`]): each changed weight is
//! rebuilt from its original value (read again from the weight file, and checked against the
//! bytes read at load) plus the
//! updates, so LoRAs can be swapped at run time without reloading the models and without
//! rounding drift.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use crate::backend::Backend;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::weights::{Checkpoint, Layout, WeightIndex};

/// A LoRA file and the strength to apply it with (1 = as trained; negative values subtract).
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub path: PathBuf,
    pub scale: f32,
}

impl Lora {
    pub fn new(path: impl Into<PathBuf>, scale: f32) -> Self {
        Self {
            path: path.into(),
            scale,
        }
    }
}

/// What applying LoRAs did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// How many weights the LoRAs change (each counted once).
    pub updated: usize,
    /// Entries of the files that match no weight of the models, as `file: name`.
    pub unmatched: Vec<String>,
    /// Text-encoder entries left out because CLIP is not loaded (ELLA alone does not use it).
    pub skipped_clip: usize,
}

/// Which model an update belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Unet,
    Clip,
}

/// One low-rank update of one weight.
#[derive(Debug)]
pub(crate) struct Update {
    pub target: Target,
    /// The weight's name in its checkpoint (e.g. `down_blocks.0…to_q.weight`).
    pub weight: String,
    /// `[r, in·k·k]` and `[out, r]`, f32.
    pub down: TensorData,
    pub up: TensorData,
    /// `scale · α / r`.
    pub factor: f32,
}

/// The three tensors of one LoRA module in a file.
#[derive(Default)]
struct LoraModule {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// Splits a file key into its module and its part, for both formats.
fn split_key(key: &str) -> Option<(&str, Part)> {
    [
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ]
    .into_iter()
    .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|module| (module, part)))
}

/// Which of a LoRA module's tensors a key holds.
#[derive(Clone, Copy)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// Maps a file's module names to the weights of the loaded models.
struct Resolver<'a> {
    unet: &'a WeightIndex,
    clip: Option<&'a WeightIndex>,
    /// kohya module name → U-Net weight name.
    unet_kohya: HashMap<String, String>,
    /// kohya module name, and diffusers' path without `text_model.` → CLIP weight name.
    clip_kohya: HashMap<String, String>,
    clip_paths: HashMap<String, String>,
}

impl<'a> Resolver<'a> {
    fn new(unet: &'a WeightIndex, clip: Option<&'a WeightIndex>) -> Self {
        let module = |weight: &str| weight.strip_suffix(".weight").unwrap_or(weight).to_string();
        let unet_kohya = unet
            .weights
            .keys()
            .map(|w| {
                (
                    format!("lora_unet_{}", module(w).replace('.', "_")),
                    w.clone(),
                )
            })
            .collect();
        let clip_names: Vec<(String, String)> = clip
            .map(|c| {
                c.weights
                    .keys()
                    .map(|w| {
                        let path = module(w);
                        let path = path
                            .strip_prefix("text_model.")
                            .unwrap_or(&path)
                            .to_string();
                        (path, w.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let clip_kohya = clip_names
            .iter()
            .map(|(path, w)| {
                (
                    format!("lora_te_text_model_{}", path.replace('.', "_")),
                    w.clone(),
                )
            })
            .collect();
        Self {
            unet,
            clip,
            unet_kohya,
            clip_kohya,
            clip_paths: clip_names.into_iter().collect(),
        }
    }

    /// `Some(Ok(target, weight))` for a module of a loaded model, `Some(Err(()))` for a
    /// text-encoder module while CLIP is not loaded, `None` when nothing matches.
    fn resolve(&self, module: &str) -> Option<std::result::Result<(Target, String), ()>> {
        let text_encoder = module.starts_with("lora_te_") || module.starts_with("text_encoder.");
        if text_encoder && self.clip.is_none() {
            return Some(Err(()));
        }
        let found = if let Some(w) = self.unet_kohya.get(module) {
            Some((Target::Unet, w.clone()))
        } else if let Some(w) = self.clip_kohya.get(module) {
            Some((Target::Clip, w.clone()))
        } else if let Some(path) = module.strip_prefix("unet.") {
            let weight = format!("{path}.weight");
            self.unet
                .weights
                .contains_key(&weight)
                .then_some((Target::Unet, weight))
        } else if let Some(path) = module.strip_prefix("text_encoder.") {
            let path = path.strip_prefix("text_model.").unwrap_or(path);
            self.clip_paths.get(path).map(|w| (Target::Clip, w.clone()))
        } else {
            None
        };
        found.map(Ok)
    }

    fn index(&self, target: Target) -> &WeightIndex {
        match target {
            Target::Unet => self.unet,
            Target::Clip => self.clip.expect("resolved only when CLIP is loaded"),
        }
    }
}

/// Reads one LoRA file and checks it against the loaded models: the updates it makes.
/// Entries that match no weight are added to `report`; a file that matches nothing, or whose
/// shapes differ from the weights it names, is an error (a LoRA for another architecture).
pub(crate) fn read_updates(
    lora: &Lora,
    unet: &WeightIndex,
    clip: Option<&WeightIndex>,
    report: &mut LoraReport,
) -> Result<Vec<Update>> {
    if !lora.scale.is_finite() {
        return Err(Error::InvalidInput(format!(
            "LoRA scale {} of {} is not a finite number",
            lora.scale,
            lora.path.display()
        )));
    }
    let file = Checkpoint::open(&lora.path)?;
    let incompatible = |reason: String| {
        Error::IncompatibleModels(format!("LoRA {}: {reason}", lora.path.display()))
    };
    let mut modules: BTreeMap<&str, LoraModule> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for key in file.names() {
        match split_key(key) {
            Some((module, part)) => {
                let entry = modules.entry(module).or_default();
                let slot = match part {
                    Part::Down => &mut entry.down,
                    Part::Up => &mut entry.up,
                    Part::Alpha => &mut entry.alpha,
                };
                *slot = Some(key.to_string());
            }
            None => unmatched.push(key.to_string()),
        }
    }
    // diffusers' PEFT files keep α in their metadata: `{"unet.lora_alpha": 8, ...}`.
    let adapter_metadata: Option<serde_json::Value> = file
        .metadata("lora_adapter_metadata")
        .and_then(|text| serde_json::from_str(text).ok());
    let file_alpha = |target: Target| {
        let key = match target {
            Target::Unet => "unet.lora_alpha",
            Target::Clip => "text_encoder.lora_alpha",
        };
        let alpha = adapter_metadata.as_ref()?.get(key)?.as_f64()? as f32;
        alpha.is_finite().then_some(alpha)
    };
    let resolver = Resolver::new(unet, clip);
    let mut updates = Vec::new();
    let mut skipped = 0;
    for (module, parts) in &modules {
        let (target, weight) = match resolver.resolve(module) {
            Some(Ok(found)) => found,
            Some(Err(())) => {
                skipped += 1;
                continue;
            }
            None => {
                unmatched.push(module.to_string());
                continue;
            }
        };
        let (Some(down), Some(up)) = (&parts.down, &parts.up) else {
            return Err(incompatible(format!(
                "`{module}` lacks its down or up matrix"
            )));
        };
        let shape = &resolver.index(target).weights[&weight].shape;
        let (down_shape, up_shape) = (
            file.shape(down).unwrap_or(&[]),
            file.shape(up).unwrap_or(&[]),
        );
        let rank = down_shape.first().copied().unwrap_or(0);
        let fan_in: usize = shape[1..].iter().product();
        let fits = rank > 0
            && down_shape[1..].iter().product::<usize>() == fan_in
            && up_shape.first() == Some(&shape[0])
            && up_shape.get(1) == Some(&rank)
            && up_shape[2..].iter().all(|&d| d == 1);
        if !fits {
            return Err(incompatible(format!(
                "`{module}` has down {down_shape:?} and up {up_shape:?}, which do not fit `{weight}` \
                 {shape:?} of this model: a LoRA for another architecture (SD2, SDXL?)"
            )));
        }
        let alpha = match &parts.alpha {
            None => file_alpha(target).unwrap_or(rank as f32),
            Some(name) => {
                let values: Vec<f32> = file
                    .data(name)?
                    .convert::<f32>()
                    .to_vec()
                    .unwrap_or_default();
                match values.as_slice() {
                    [alpha] if alpha.is_finite() => *alpha,
                    _ => return Err(incompatible(format!("`{name}` is not one number"))),
                }
            }
        };
        let f32_matrix = |name: &str, rows: usize, cols: usize| -> Result<TensorData> {
            let values: Vec<f32> = file
                .data(name)?
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            Ok(TensorData::new(values, [rows, cols]))
        };
        let (down, up) = (
            f32_matrix(down, rank, fan_in)?,
            f32_matrix(up, shape[0], rank)?,
        );
        let factor = lora.scale * alpha / rank as f32;
        // |Δw| ≤ |factor| · rank · max|up| · max|down| for every element: refuse an update
        // that could overflow f32 (an absurd scale or α) before any weight changes.
        let largest = |m: &TensorData| m.iter::<f32>().fold(0f32, |a, v| a.max(v.abs()));
        let bound = factor.abs() * rank as f32 * largest(&up) * largest(&down);
        if !bound.is_finite() || bound >= f32::MAX / 4.0 {
            return Err(Error::InvalidInput(format!(
                "LoRA {} at scale {} (α {alpha}, rank {rank}) would overflow `{weight}`",
                lora.path.display(),
                lora.scale
            )));
        }
        updates.push(Update {
            target,
            weight,
            down,
            up,
            factor,
        });
    }
    if updates.is_empty() && skipped == 0 {
        return Err(incompatible(
            "it matches no weight of this U-Net or text encoder: a LoRA for another \
             architecture (SD2, SDXL?) or of a kind not supported (LoHa, LoKr)"
                .into(),
        ));
    }
    let file_name = lora.path.display();
    report
        .unmatched
        .extend(unmatched.into_iter().map(|m| format!("{file_name}: {m}")));
    report.skipped_clip += skipped;
    Ok(updates)
}

/// One application of a set of LoRA updates to the models they target, remembering which
/// weights each model now holds changed (to restore them on the next application).
pub(crate) struct Merge<'a, B: Backend> {
    updates: &'a [Update],
    /// The weights the previous application changed, per model.
    previous: &'a BTreeMap<Target, BTreeSet<String>>,
    device: &'a B::Device,
    /// The weights this application changed, per model.
    pub changed: BTreeMap<Target, BTreeSet<String>>,
}

impl<'a, B: Backend> Merge<'a, B> {
    pub(crate) fn new(
        updates: &'a [Update],
        previous: &'a BTreeMap<Target, BTreeSet<String>>,
        device: &'a B::Device,
    ) -> Self {
        Self {
            updates,
            previous,
            device,
            changed: BTreeMap::new(),
        }
    }

    /// `module` (the `target` model, indexed by `index`) with its LoRA updates applied and
    /// the weights the previous application changed restored.
    pub(crate) fn model<M: Module<B>>(
        &mut self,
        module: M,
        index: &WeightIndex,
        target: Target,
    ) -> Result<M> {
        let updates: Vec<&Update> = self.updates.iter().filter(|u| u.target == target).collect();
        let restore = self.previous.get(&target).cloned().unwrap_or_default();
        let (module, changed) = apply(module, index, &updates, &restore, self.device)?;
        self.changed.insert(target, changed);
        Ok(module)
    }
}

/// Rebuilds the weights of `module` (indexed by `index`) that `updates` change or that
/// `restore` names (changed by an earlier call): original value plus this call's updates.
/// Returns the module and the names of the weights it now holds changed.
fn apply<B: Backend, M: Module<B>>(
    module: M,
    index: &WeightIndex,
    updates: &[&Update],
    restore: &BTreeSet<String>,
    device: &B::Device,
) -> Result<(M, BTreeSet<String>)> {
    let changed: BTreeSet<String> = updates.iter().map(|u| u.weight.clone()).collect();
    let mut values = HashMap::new();
    for name in changed.union(restore) {
        let weight = &index.weights[name];
        let [rows, cols] = [weight.shape[0], weight.shape[1..].iter().product()];
        let base = index.checkpoint.values(name, &weight.shape)?;
        let base = TensorData::from_bytes_vec(base.as_bytes().to_vec(), [rows, cols], base.dtype);
        let mut value =
            Tensor::<B, 2>::from_data(base.convert_dtype(DType::F32), (device, DType::F32));
        for update in updates.iter().filter(|u| &u.weight == name) {
            let up = Tensor::<B, 2>::from_data(update.up.clone(), (device, DType::F32));
            let down = Tensor::<B, 2>::from_data(update.down.clone(), (device, DType::F32));
            value = value + up.matmul(down) * update.factor;
        }

        let value = match weight.layout {
            Layout::Linear => value.transpose(),
            Layout::Conv => value,
        };
        values.insert(weight.param, value.reshape([rows * cols]));
    }
    let mut mapper = Replace { values };
    let module = module.map(&mut mapper);
    if let Some(id) = mapper.values.keys().next() {
        return Err(Error::InvalidInput(format!(
            "internal: parameter {id} of a LoRA weight is not in the module"
        )));
    }
    Ok((module, changed))
}

/// Replaces parameters by id, keeping each one's shape and float type.
struct Replace<B: Backend> {
    values: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleMapper<B> for Replace<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.values.remove(&param.id) {
            None => param,
            Some(value) => param.map(|old| {
                let (dims, dtype) = (old.dims(), old.dtype());
                value.reshape(dims).cast(dtype)
            }),
        }
    }
}
