//! The official full-size files, verified without their gigabytes: committed manifests of
//! their tensor names, shapes and dtypes (`scripts/make_manifests.py`) must equal what the
//! loaders expect for the full-size configs, and must add up to the published file sizes.

mod common;

use std::collections::BTreeMap;

use common::fixture;

use ella_core::weights::{TensorSpec, plan};
use ella_core::{Connector, ConnectorConfig, DefaultBackend, T5Config, T5Encoder, T5Precision};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
}

fn manifest(name: &str) -> BTreeMap<String, Entry> {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn as_map(specs: Vec<TensorSpec>) -> BTreeMap<String, Vec<usize>> {
    specs.into_iter().map(|s| (s.name, s.shape)).collect()
}

fn params(manifest: &BTreeMap<String, Entry>) -> usize {
    manifest
        .values()
        .map(|e| e.shape.iter().product::<usize>())
        .sum()
}

fn data_bytes(manifest: &BTreeMap<String, Entry>) -> usize {
    let size = |dtype: &str| match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        other => panic!("unexpected dtype {other}"),
    };
    manifest
        .values()
        .map(|e| e.shape.iter().product::<usize>() * size(&e.dtype))
        .sum()
}

#[test]
fn flan_t5_xl_encoder_matches_the_loader() {
    let manifest = manifest("flan-t5-xl-encoder.json");
    let shapes: BTreeMap<String, Vec<usize>> = manifest
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    let config = T5Config::flan_t5_xl();
    let expected = plan::<DefaultBackend, _>(&Default::default(), |vb| {
        T5Encoder::from_loader(vb, &config, T5Precision::F32, "shared.weight")
    });
    assert_eq!(shapes, as_map(expected.unwrap()));
    assert_eq!(manifest.len(), 219);
    assert_eq!(params(&manifest), 1_223_527_424);
    // 2.95 GB hosted file: all F16 except the 24 `wo` matrices in F32.
    assert_eq!(data_bytes(&manifest), 2_950_371_328);
}

#[test]
fn official_ella_connector_matches_the_loader_and_the_published_size() {
    let manifest = manifest("ella-sd1.5-tsc-t5xl.json");
    let shapes: BTreeMap<String, Vec<usize>> = manifest
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    let config = ConnectorConfig::default();
    let expected = plan::<DefaultBackend, _>(&Default::default(), |vb| {
        Connector::from_loader(vb, &config)
    });
    assert_eq!(shapes, as_map(expected.unwrap()));
    assert_eq!(manifest.len(), 93);
    assert_eq!(params(&manifest), 66_820_608);
    assert!(manifest.values().all(|e| e.dtype == "F16"));

    // Serialise a zero-filled file with exactly these names, shapes and dtypes: its size must
    // be the published LFS size of ella-sd1.5-tsc-t5xl.safetensors, byte for byte.
    let zeros = vec![0u8; data_bytes(&manifest)];
    let mut offset = 0;
    let views: Vec<(String, TensorView)> = manifest
        .iter()
        .map(|(name, e)| {
            let len = e.shape.iter().product::<usize>() * 2;
            let view =
                TensorView::new(Dtype::F16, e.shape.clone(), &zeros[offset..offset + len]).unwrap();
            offset += len;
            (name.clone(), view)
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    assert_eq!(file.len(), 133_651_928);
}

/// A safetensors file with the manifest's names, shapes and dtypes whose data region is a
/// hole (a sparse file of zeros): the real loaders run on the full-size layout without GBs
/// of disk.
fn sparse_checkpoint(
    manifest: &BTreeMap<String, Entry>,
    path: &std::path::Path,
) -> ella_core::Checkpoint {
    use std::io::Write;
    let size = |dtype: &str| if dtype == "F32" { 4 } else { 2 };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, entry) in manifest {
        let len = entry.shape.iter().product::<usize>() * size(&entry.dtype);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": entry.dtype, "shape": entry.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len((8 + text.len() + offset) as u64).unwrap();
    ella_core::Checkpoint::open(path).unwrap()
}

/// SD1.5's U-Net and VAE: the committed manifests (diffusers' own module names and shapes)
/// load through the real loaders with the built-in SD1.5 configs, nothing missing or left
/// over, and have SD1.5's parameter counts.
#[test]
fn sd15_unet_and_vae_load_from_their_full_size_layout() {
    use burn::backend::Flex as B;
    use burn::module::Module;
    use burn::tensor::DType;
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();

    let unet = manifest("sd15-unet.json");
    assert_eq!(params(&unet), 859_520_964);
    let checkpoint = sparse_checkpoint(&unet, &dir.path().join("unet.safetensors"));
    let model = ella_core::UNet2DConditionModel::<B>::from_checkpoint(
        ella_core::UNetConfig::sd15(),
        &checkpoint,
        &device,
        DType::F16,
    )
    .unwrap();
    assert_eq!(model.num_params(), 859_520_964);
    drop(model);

    let vae = manifest("sd15-vae.json");
    assert_eq!(params(&vae), 83_653_863);
    let checkpoint = sparse_checkpoint(&vae, &dir.path().join("vae.safetensors"));
    let model = ella_core::AutoencoderKL::<B>::from_checkpoint(
        ella_core::VaeConfig::sd15(),
        &checkpoint,
        &device,
        DType::F16,
    )
    .unwrap();
    assert_eq!(model.num_params(), 83_653_863);
}
