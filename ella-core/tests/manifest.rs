//! The official full-size files, verified without their gigabytes: committed manifests of
//! their tensor names, shapes and dtypes (`scripts/make_manifests.py`) must equal what the
//! loaders expect for the full-size configs, and must add up to the published file sizes.

mod common;

use std::collections::BTreeMap;

use common::fixture;
use ella_core::weights::TensorSpec;
use ella_core::{ConnectorConfig, T5Config};
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
    assert_eq!(shapes, as_map(T5Config::flan_t5_xl().expected_tensors()));
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
    assert_eq!(
        shapes,
        as_map(ConnectorConfig::default().expected_tensors())
    );
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
