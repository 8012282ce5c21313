//! The GPU kernel cache (`ella_core::gpu`), on wgpu (lavapipe in CI): a second process with
//! a warm cache compiles no kernel and autotunes nothing for the same work; the directory
//! is the host's choice, checked before CubeCL can panic on it; and neither configuration
//! files in the working directory (which CubeCL and Burn would read, and panic on when
//! malformed) nor a working directory at all (a deleted one) matter.
#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{DType, Tensor};
use ella_core::gpu::{KernelCacheStats, kernel_cache_dir, set_kernel_cache_dir};
use ella_core::{Connector, ConnectorConfig, Error, Wgpu};

/// The directory the child process keeps its kernels in.
const CHILD_DIR: &str = "ELLA_TEST_KERNEL_CACHE";
/// Set: the child deletes its working directory before it starts.
const DELETE_CWD: &str = "ELLA_TEST_DELETE_CWD";

/// Run only as a child of `wgpu_warm_cache_compiles_nothing`: the tiny connector (TSC) on
/// wgpu, with the kernel cache in `$ELLA_TEST_KERNEL_CACHE`. The connector has every kind of
/// kernel a generation compiles (autotuned matmuls and reductions, fused element-wise
/// blocks, attention) at a fraction of a generation's cold start on lavapipe (CI's time).
#[test]
#[ignore = "a child process of wgpu_warm_cache_compiles_nothing"]
fn kernel_cache_child() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by wgpu_warm_cache_compiles_nothing");
    if std::env::var_os(DELETE_CWD).is_some() {
        std::fs::remove_dir(std::env::current_dir().unwrap()).unwrap();
    }
    set_kernel_cache_dir(&dir).unwrap();
    let device = Default::default();
    let config = ConnectorConfig::from_file(&common::fixture("ella/config.json")).unwrap();
    let connector = Connector::<Wgpu>::load(
        common::fixture("ella/ella.safetensors"),
        &config,
        &device,
        DType::F32,
    )
    .unwrap();
    let t5_states = Tensor::<Wgpu, 3>::ones([2, 7, config.input_dim], &device);
    connector
        .forward(t5_states, &[999.0, 500.0])
        .unwrap()
        .into_data();
}

/// Runs [`kernel_cache_child`] in a new process in `cwd` (deleted by the child with
/// `delete_cwd`); returns what it added to the cache.
fn child_run(dir: &Path, cwd: &Path, delete_cwd: bool) -> KernelCacheStats {
    let before = KernelCacheStats::read(dir).unwrap();
    let start = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "kernel_cache_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .current_dir(cwd)
        .env(CHILD_DIR, dir);
    if delete_cwd {
        child.env(DELETE_CWD, "1");
    }
    let output = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child process: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let after = KernelCacheStats::read(dir).unwrap();
    let added = KernelCacheStats {
        kernels: after.kernels - before.kernels,
        autotune_results: after.autotune_results - before.autotune_results,
    };
    eprintln!("{:.1} s, {added:?}", start.elapsed().as_secs_f64());
    added
}

#[test]
fn wgpu_warm_cache_compiles_nothing() {
    if !common::wgpu_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Configuration files CubeCL and Burn would read from the working directory, malformed.
    let configs = tempfile::tempdir().unwrap();
    for name in ["cubecl.toml", "burn.toml"] {
        std::fs::write(configs.path().join(name), "[[[ not toml").unwrap();
    }
    let cold = child_run(dir.path(), configs.path(), false);
    assert!(
        cold.kernels > 0 && cold.autotune_results > 0,
        "a cold process kept no kernels in {}: {cold:?} (is wgpu on its SPIR-V path?)",
        dir.path().display()
    );
    let deleted = tempfile::tempdir().unwrap().keep();
    let warm = child_run(dir.path(), &deleted, true);
    assert_eq!(
        warm,
        KernelCacheStats::default(),
        "a second process compiled or autotuned again (the first added {cold:?})"
    );
}

/// The directory is checked, then fixed for the process: the same one again is fine,
/// another one is refused naming the one in use. (This test binary's only in-process
/// setting: the child runs in a process of its own.)
#[test]
fn wgpu_kernel_cache_dir_is_checked_then_fixed() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = set_kernel_cache_dir(file.path().join("kernels")).unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err}");
    assert_eq!(kernel_cache_dir(), None, "a refused directory was kept");

    let dir = tempfile::tempdir().unwrap();
    set_kernel_cache_dir(dir.path()).unwrap();
    set_kernel_cache_dir(dir.path()).unwrap();
    assert_eq!(kernel_cache_dir().as_deref(), Some(dir.path()));
    let other = tempfile::tempdir().unwrap();
    let err = set_kernel_cache_dir(other.path()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains(&dir.path().display().to_string())),
        "{err}"
    );
}
