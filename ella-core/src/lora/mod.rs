//! LoRA: updates of the U-Net's and CLIP's weights, `W' = W + Σ scale · ΔW` (convolution
//! kernels flattened), with each module's ΔW of the kind its parts say
//! (docs/lora-kinds-reference.md, "the spec" below):
//!
//! - LoRA / LoCon, `ΔW = α/r · up·down`, as kohya's sd-scripts, A1111 and LyCORIS merge it,
//!   and LoCon with a Tucker core (`lora_mid`);
//! - LyCORIS' LoHa (`hada_*`) and LoKr (`lokr_*`), with or without Tucker cores;
//! - diffusers' PEFT LoRA, with α and rank per module from the adapter configs diffusers
//!   stores in the file (`alpha_pattern`, `rank_pattern`, rsLoRA: `peft`).
//!
//! Modules are named the kohya way, `lora_unet_{path}` (the module path of diffusers' U-Net or
//! of the original LDM one, `.` written `_`) and `lora_te_text_model_{path}` (or
//! `lora_te1_…`), or the PEFT way, `unet.{path}.lora_A.weight` (or the older
//! `.lora.down.weight`), `text_encoder.{path}…`. The formulas are in `kinds`. Kinds with no
//! `W + ΔW` merge — (IA)³, DoRA, GLoRA, OFT, LyCORIS full and norm modules, PEFT's
//! `lora_bias` — and modules with a part missing or one their kind does not have are errors
//! that name the file, the module and the kind, never skipped.
//!
//! The updates are applied to the loaded modules in place ([`apply`]): each changed weight is
//! rebuilt from its original value (read again from the weight file, and checked against the
//! bytes read at load) plus the updates, so LoRAs can be swapped at run time without
//! reloading the models and without rounding drift.

mod kinds;
mod peft;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::unet::ldm_names::UNetLayout;
use crate::weights::{Checkpoint, Layout, WeightIndex};
use kinds::{Array, Factor};
use peft::{AdapterMetadata, PeftConfig};

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

/// One update of one weight: `W += factor · ΔW`.
#[derive(Debug)]
pub(crate) struct Update {
    pub target: Target,
    /// The weight's name in its checkpoint (e.g. `down_blocks.0…to_q.weight`).
    pub weight: String,
    pub delta: Delta,
    /// The user's scale times the kind's own (`α / r` mostly).
    pub factor: f32,
}

/// A weight's ΔW, `[out, in·kh·kw]`, f32.
#[derive(Debug)]
pub(crate) enum Delta {
    /// `up @ down` (LoRA, LoCon), multiplied on the device.
    LowRank(LowRank),
    /// `(a₁ @ b₁) ⊙ (a₂ @ b₂)` (LoHa), both products on the device.
    Hadamard(Box<[LowRank; 2]>),
    /// ΔW itself, computed on the host from the factors of LoKr or a Tucker core.
    Full(TensorData),
}

/// `up` `[out, r]` and `down` `[r, in·kh·kw]`, whose product is a ΔW or a factor of one.
#[derive(Debug)]
pub(crate) struct LowRank {
    pub up: TensorData,
    pub down: TensorData,
}

impl LowRank {
    fn new(up: Array, down: Array) -> Self {
        Self {
            up: matrix(up),
            down: matrix(down),
        }
    }

    /// A bound on the magnitude of the product's elements.
    fn bound(&self) -> f32 {
        self.down.shape[0] as f32 * largest(&self.up) * largest(&self.down)
    }
}

/// The largest magnitude in `data`.
fn largest(data: &TensorData) -> f32 {
    data.iter::<f32>().fold(0f32, |a, v| a.max(v.abs()))
}

impl Delta {
    fn full(delta: Array) -> Self {
        Self::Full(matrix(delta))
    }

    /// A bound on the magnitude of ΔW's elements.
    fn bound(&self) -> f32 {
        match self {
            Self::LowRank(product) => product.bound(),
            Self::Hadamard(pair) => pair[0].bound() * pair[1].bound(),
            Self::Full(delta) => largest(delta),
        }
    }
}

/// An array's 2-D view (its trailing dimensions flattened) as tensor data.
fn matrix(array: Array) -> TensorData {
    let shape = [array.rows(), array.cols()];
    TensorData::new(array.values, shape)
}

/// The kinds of module ella merges, told apart by their parts (the spec's §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `lora_down.weight` and `lora_up.weight`, and `lora_mid.weight` with a Tucker core:
    /// LoRA, LoCon (PEFT's `lora_A`, `lora_B` are read as the first two).
    Lora,
    /// `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, and `hada_t1`, `hada_t2` with
    /// Tucker cores.
    LoHa,
    /// `lokr_w1` or `lokr_w1_a` and `lokr_w1_b`; `lokr_w2` or `lokr_w2_a` and `lokr_w2_b`,
    /// and `lokr_t2` with a Tucker core.
    LoKr,
}

/// Parts only kinds ella does not merge have, and those kinds (the spec's §1). Their updates
/// are no `W + scale·ΔW`: (IA)³ and DoRA rescale the weight, OFT rotates it, GLoRA's update
/// reads it; norm modules and PEFT's `lora_bias` change what LoRA merging does not reach
/// (norm layers, biases); a LyCORIS "full" module (a stored ΔW) has no fixture to check it.
const REFUSED: [(&str, &str); 13] = [
    ("dora_scale", "DoRA"),
    ("lora_magnitude_vector", "DoRA"),
    ("on_input", "(IA)³"),
    ("a1.weight", "GLoRA"),
    ("a2.weight", "GLoRA"),
    ("b1.weight", "GLoRA"),
    ("b2.weight", "GLoRA"),
    ("oft_blocks", "OFT"),
    ("oft_diag", "OFT"),
    ("diff", "LyCORIS full"),
    ("w_norm", "LyCORIS norm"),
    ("b_norm", "LyCORIS norm"),
    ("lora_B.bias", "PEFT lora_bias"),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Lora => "LoRA",
            Self::LoHa => "LoHa",
            Self::LoKr => "LoKr",
        }
    }

    /// The kind a module's parts make it, or why ella does not merge it.
    fn of(parts: &BTreeMap<&str, &str>) -> std::result::Result<Self, String> {
        if let Some((part, kind)) = REFUSED.iter().find(|(part, _)| parts.contains_key(part)) {
            return Err(format!(
                "{kind} (it has `{part}`), a kind ella does not merge: it reads LoRA, LoCon, \
                 LoHa and LoKr modules"
            ));
        }
        [
            ("hada_", Self::LoHa),
            ("lokr_", Self::LoKr),
            ("lora_", Self::Lora),
        ]
        .into_iter()
        .find(|(prefix, _)| parts.keys().any(|part| part.starts_with(prefix)))
        .map(|(_, kind)| kind)
        .ok_or_else(|| {
            let names: Vec<&str> = parts.keys().copied().collect();
            format!("of no kind ella knows (its parts: {names:?})")
        })
    }
}

/// Splits a file key into its module and its part (the spec's §1): kohya's keys at their
/// first `.` (`lora_unet_…_to_q` and `lora_down.weight`), PEFT's before their `lora…` part or
/// `alpha` (`unet.….to_q` and `lora_A.weight`), with PEFT's names of the two matrices
/// written as kohya's. `None` for a key of neither format.
fn split_key(key: &str) -> Option<(&str, &str)> {
    if key.starts_with("lora_") {
        return key.split_once('.');
    }
    if !(key.starts_with("unet.") || key.starts_with("text_encoder.")) {
        return None;
    }
    let (module, part) = match key.find(".lora") {
        Some(at) => (&key[..at], &key[at + 1..]),
        None => (key.strip_suffix(".alpha")?, "alpha"),
    };
    let part = match part {
        "lora_A.weight" | "lora.down.weight" => "lora_down.weight",
        "lora_B.weight" | "lora.up.weight" => "lora_up.weight",
        part => part,
    };
    Some((module, part))
}

/// `Error::IncompatibleModels` about the LoRA file at `path`.
fn incompatible(path: &Path, reason: impl Display) -> Error {
    Error::IncompatibleModels(format!("LoRA {}: {reason}", path.display()))
}

/// One module's parts, read one by one: a module that lacks a part its kind needs, or has
/// one its kind does not read, is refused by name.
struct Parts<'a> {
    file: &'a Checkpoint,
    module: &'a str,
    kind: Kind,
    /// Part → file key, of the parts not read yet.
    keys: BTreeMap<&'a str, &'a str>,
    /// `part [shape]` of the parts read, for messages.
    read: Vec<String>,
}

impl Parts<'_> {
    fn has(&self, part: &str) -> bool {
        self.keys.contains_key(part)
    }

    /// An error about this module, naming the file, the module and its kind.
    fn error(&self, reason: impl Display) -> Error {
        let (module, kind) = (self.module, self.kind.name());
        incompatible(self.file.path(), format!("`{module}` ({kind}) {reason}"))
    }

    /// The error of parts that do not fit the weight `weight` of shape `shape`.
    fn misfit(&self, weight: &str, shape: &[usize]) -> Error {
        self.error(format_args!(
            "has {}, which do not fit `{weight}` {shape:?} of this model: a LoRA for another \
             architecture (SD2, SDXL?)",
            self.read.join(", ")
        ))
    }

    /// The part `part`, which a module of this kind must have.
    fn take(&mut self, part: &str) -> Result<Array> {
        match self.take_if(part)? {
            Some(array) => Ok(array),
            None => Err(self.error(format_args!("lacks its `{part}`"))),
        }
    }

    /// The part `part`, if the module has it, in f32.
    fn take_if(&mut self, part: &str) -> Result<Option<Array>> {
        let Some(key) = self.keys.remove(part) else {
            return Ok(None);
        };
        let data = self.file.data(key)?;
        let array = Array {
            shape: data.shape.to_vec(),
            values: data.iter::<f32>().collect(),
        };
        if array.values.is_empty() {
            return Err(self.error(format_args!("has an empty `{part}`")));
        }
        self.read.push(format!("{part} {:?}", array.shape));
        Ok(Some(array))
    }

    /// The module's `alpha`, one number, if it has one.
    fn alpha(&mut self) -> Result<Option<f32>> {
        match self.take_if("alpha")? {
            None => Ok(None),
            Some(Array { values, .. }) if values.len() == 1 => Ok(Some(values[0])),
            Some(_) => Err(self.error("has an `alpha` that is not one number")),
        }
    }

    /// Errors when a part was left unread: one the module's kind does not have.
    fn finish(self) -> Result<()> {
        match self.keys.keys().next() {
            None => Ok(()),
            Some(part) => Err(self.error(format_args!(
                "also has `{part}`, which a {} module does not",
                self.kind.name()
            ))),
        }
    }
}

/// `α / r` of a kohya or LyCORIS module (the spec's §3–5): 1 without `alpha`, and with an
/// `alpha` of 0, which kohya's and LyCORIS' training read as `r`.
fn kohya_scale(alpha: Option<f32>, rank: usize) -> f32 {
    match alpha {
        Some(alpha) if alpha != 0.0 => alpha / rank as f32,
        _ => 1.0,
    }
}

/// A LoRA or LoCon module (§3, PEFT's §6): `up @ down`, or with a Tucker core (`lora_mid`)
/// the full ΔW, and its scale, `α / r`; a PEFT module's α (and rank, checked) come from its
/// model's adapter config, `peft` (that config and the module's path in it). This and the
/// two below return `None` when the parts do not fit the weight's `shape`.
fn lora_delta(
    parts: &mut Parts,
    shape: &[usize],
    peft: Option<(&PeftConfig, &str)>,
) -> Result<Option<(Delta, f32)>> {
    let (down, up) = (
        parts.take("lora_down.weight")?,
        parts.take("lora_up.weight")?,
    );
    let mid = parts.take_if("lora_mid.weight")?;
    let alpha = parts.alpha()?;
    let rank = down.rows();
    let scale = match peft {
        None => kohya_scale(alpha, rank),
        Some((config, path)) => config
            .scale(path, rank, alpha)
            .map_err(|reason| parts.error(format_args!("is {reason}")))?,
    };
    let delta = match mid {
        Some(mid) => kinds::locon_tucker(&up, &mid, &down, shape).map(Delta::full),
        None => {
            kinds::low_rank_fits(&up, &down, shape).then(|| Delta::LowRank(LowRank::new(up, down)))
        }
    };
    Ok(delta.map(|delta| (delta, scale)))
}

/// A LoHa module (§4), scaled by `α / r` with `r` the rows of `hada_w1_b`.
fn loha_delta(parts: &mut Parts, shape: &[usize]) -> Result<Option<(Delta, f32)>> {
    let w1 = (parts.take("hada_w1_a")?, parts.take("hada_w1_b")?);
    let w2 = (parts.take("hada_w2_a")?, parts.take("hada_w2_b")?);
    let cores = match parts.has("hada_t1") || parts.has("hada_t2") {
        true => Some((parts.take("hada_t1")?, parts.take("hada_t2")?)),
        false => None,
    };
    let scale = kohya_scale(parts.alpha()?, w1.1.rows());
    let delta = match cores {
        Some(cores) => kinds::loha_tucker(&w1, &w2, &cores, shape).map(Delta::full),
        None => kinds::loha_fits(&w1, &w2, shape).then(|| {
            let ((a1, b1), (a2, b2)) = (w1, w2);
            Delta::Hadamard(Box::new([LowRank::new(a1, b1), LowRank::new(a2, b2)]))
        }),
    };
    Ok(delta.map(|delta| (delta, scale)))
}

/// A LoKr module (§5), scaled by `α / r` with `r` the rank of its factored factor, or by 1
/// when both factors are whole.
fn lokr_delta(parts: &mut Parts, shape: &[usize]) -> Result<Option<(Delta, f32)>> {
    let w1 = match parts.has("lokr_w1") {
        true => Factor::Whole(parts.take("lokr_w1")?),
        false => Factor::Product(parts.take("lokr_w1_a")?, parts.take("lokr_w1_b")?),
    };
    let w2 = if parts.has("lokr_w2") {
        Factor::Whole(parts.take("lokr_w2")?)
    } else if parts.has("lokr_t2") {
        Factor::Tucker {
            core: parts.take("lokr_t2")?,
            a: parts.take("lokr_w2_a")?,
            b: parts.take("lokr_w2_b")?,
        }
    } else {
        Factor::Product(parts.take("lokr_w2_a")?, parts.take("lokr_w2_b")?)
    };
    let alpha = parts.alpha()?;
    let scale = kinds::lokr_rank(&w1, &w2).map_or(1.0, |rank| kohya_scale(alpha, rank));
    let delta = kinds::lokr(&w1, &w2, shape);
    Ok(delta.map(|delta| (Delta::full(delta), scale)))
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
    fn new(unet: &'a WeightIndex, layout: &UNetLayout, clip: Option<&'a WeightIndex>) -> Self {
        let module = |weight: &str| weight.strip_suffix(".weight").unwrap_or(weight).to_string();
        // kohya names a U-Net module by its diffusers path or by its LDM one (the spec's
        // §2): both spellings lead to the weight.
        let mut unet_kohya = HashMap::new();
        for weight in unet.weights.keys() {
            for path in [Some(weight.clone()), layout.to_ldm(weight)]
                .into_iter()
                .flatten()
            {
                let name = format!("lora_unet_{}", module(&path).replace('.', "_"));
                unet_kohya.insert(name, weight.clone());
            }
        }
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
        // `lora_te1_` is how diffusers and ComfyUI also name SD1.x's one text encoder.
        let clip_kohya = clip_names
            .iter()
            .flat_map(|(path, w)| {
                ["lora_te_", "lora_te1_"].map(|prefix| {
                    let name = format!("{prefix}text_model_{}", path.replace('.', "_"));
                    (name, w.clone())
                })
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
        let text_encoder = ["lora_te_", "lora_te1_", "text_encoder."]
            .iter()
            .any(|prefix| module.starts_with(prefix));
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
/// Modules whose names match no weight are added to `report`; a file that matches nothing,
/// has a module of a kind ella does not merge or with parts missing or left over, or whose
/// shapes differ from the weights it names, is an error. `layout` is the U-Net's, whose
/// modules kohya files may name the LDM way.
pub(crate) fn read_updates(
    lora: &Lora,
    unet: &WeightIndex,
    layout: &UNetLayout,
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
    let path = file.path();
    let mut modules: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for key in file.names() {
        let Some((module, part)) = split_key(key) else {
            unmatched.push(key.to_string());
            continue;
        };
        if modules
            .entry(module)
            .or_default()
            .insert(part, key)
            .is_some()
        {
            return Err(incompatible(path, format!("`{module}` has `{part}` twice")));
        }
    }
    let metadata: AdapterMetadata = match file.metadata("lora_adapter_metadata") {
        None => AdapterMetadata::default(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            incompatible(
                path,
                format!("its `lora_adapter_metadata` is not diffusers': {e}"),
            )
        })?,
    };
    let resolver = Resolver::new(unet, layout, clip);
    let mut updates = Vec::new();
    let mut skipped = 0;
    for (module, keys) in modules {
        let kind = Kind::of(&keys)
            .map_err(|reason| incompatible(path, format!("`{module}` is {reason}")))?;
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
        let shape = &resolver.index(target).weights[&weight].shape;
        // A PEFT module's α comes from its model's adapter config (the spec's §6).
        let peft = match module.split_once('.') {
            Some(("unet", module_path)) => Some((&metadata.unet, module_path)),
            Some(("text_encoder", module_path)) => Some((&metadata.text_encoder, module_path)),
            _ => None,
        };
        let mut parts = Parts {
            file: &file,
            module,
            kind,
            keys,
            read: Vec::new(),
        };
        let delta = match kind {
            Kind::Lora => lora_delta(&mut parts, shape, peft)?,
            Kind::LoHa => loha_delta(&mut parts, shape)?,
            Kind::LoKr => lokr_delta(&mut parts, shape)?,
        };
        let Some((delta, kind_scale)) = delta else {
            return Err(parts.misfit(&weight, shape));
        };
        parts.finish()?;
        let factor = lora.scale * kind_scale;
        // Refuse an update that could overflow f32 (an absurd scale or α) before any weight
        // changes.
        let bound = factor.abs() * delta.bound();
        if !bound.is_finite() || bound >= f32::MAX / 4.0 {
            return Err(Error::InvalidInput(format!(
                "LoRA {} at scale {} would overflow `{weight}`",
                path.display(),
                lora.scale
            )));
        }
        updates.push(Update {
            target,
            weight,
            delta,
            factor,
        });
    }
    if updates.is_empty() && skipped == 0 {
        return Err(incompatible(
            path,
            "it matches no weight of this U-Net or text encoder: a LoRA for another \
             architecture (SD2, SDXL?)",
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
    let tensor = |data: &TensorData| Tensor::<B, 2>::from_data(data.clone(), (device, DType::F32));
    for name in changed.union(restore) {
        let weight = &index.weights[name];
        let [rows, cols] = [weight.shape[0], weight.shape[1..].iter().product()];
        let base = index.checkpoint.values(name, &weight.shape)?;
        let base = TensorData::from_bytes_vec(base.as_bytes().to_vec(), [rows, cols], base.dtype);
        let mut value =
            Tensor::<B, 2>::from_data(base.convert_dtype(DType::F32), (device, DType::F32));
        let product = |p: &LowRank| tensor(&p.up).matmul(tensor(&p.down));
        for update in updates.iter().filter(|u| &u.weight == name) {
            let delta = match &update.delta {
                Delta::LowRank(p) => product(p),
                Delta::Hadamard(pair) => product(&pair[0]) * product(&pair[1]),
                Delta::Full(delta) => tensor(delta),
            };
            value = value + delta * update.factor;
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
