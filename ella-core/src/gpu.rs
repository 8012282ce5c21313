//! Where the GPU backends keep their kernels between runs.
//!
//! Burn's GPU backends compile their kernels at run time (CubeCL) and autotune them: the
//! first image on a cold cache compiles a few hundred kernels and times the candidates of
//! every matmul, convolution, attention and fused block. CubeCL can keep both the autotune
//! results and the compiled kernels (CUDA PTX; SPIR-V on Vulkan) on disk, so a second
//! process starts at once. By default it keeps them under the `target/` of whatever Cargo
//! project the working directory is in, and reads `cubecl.toml` / `burn.toml` from the
//! working directory upwards: neither is right for a library inside a host application.
//!
//! ella sets CubeCL's configuration itself, once per process, before the first GPU work:
//! both caches live in one directory the host chooses ([`set_kernel_cache_dir`], the C
//! field `ella_model_params.kernel_cache_path`, the CLI's `--kernel-cache DIR`), by default
//! [`default_kernel_cache_dir`]. Configuration files in the working directory are not read;
//! CubeCL's and Burn's environment variables (`CUBECL_DEBUG_LOG`, `CUBECL_AUTOTUNE_LEVEL`,
//! `BURN_FUSION_LOG`) still apply.
//!
//! Under that directory, each ella version keeps its own folder (`ella-0.3.0/`: the kernels
//! of Burn's fusion layer change with the fixes ella carries in `vendor/`, so an older
//! version's folder may be deleted), where CubeCL writes `autotune/<version>/<device>/…`
//! and the compiled kernels under `vulkan/<version>/spirv/` (wgpu on Vulkan) or
//! `cuda/<version>/ptx/`. wgpu on Metal and DX12 compiles through WGSL, which CubeCL does
//! not cache: there only the autotune results persist.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use burn_std::config::BurnConfig;
use cubecl::config::cache::CacheConfig;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

use crate::error::{Error, Result};

/// The directory chosen for this process, once CubeCL's configuration is set.
static CHOSEN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The platform's cache directory for ella's kernels: `ella/kernels` under
/// `$XDG_CACHE_HOME` or `~/.cache` (Linux), `~/Library/Caches` (macOS), `%LOCALAPPDATA%`
/// (Windows); under the temporary directory where the platform has none.
pub fn default_kernel_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ella")
        .join("kernels")
}

/// Keeps the GPU backends' autotune results and compiled kernels in `dir` (created if
/// needed) for the rest of the process.
///
/// Call it before the first GPU work of the process; otherwise the first model loaded on a
/// GPU backend ([`crate::Pipeline::load`], or any model's `load`) settles on
/// [`default_kernel_cache_dir`]. Calling it again with the same directory is a no-op; with
/// another one, or after Burn's GPU backends were used before ella configured them, it is
/// an [`Error::InvalidInput`] that names the directory in use.
pub fn set_kernel_cache_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let mut chosen = CHOSEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(current) = chosen.as_ref() {
        return match same_dir(current, dir) {
            true => Ok(()),
            false => Err(Error::InvalidInput(format!(
                "the GPU kernel cache is already {} for this process; it cannot change to {}",
                current.display(),
                dir.display()
            ))),
        };
    }
    check_writable(dir)?;
    install(dir)?;
    *chosen = Some(dir.to_path_buf());
    Ok(())
}

/// The kernel cache directory in use, once one was set (by [`set_kernel_cache_dir`] or by
/// loading a pipeline on a GPU backend).
pub fn kernel_cache_dir() -> Option<PathBuf> {
    CHOSEN.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Before a model's first tensor on backend `B`: on a CubeCL backend (wgpu, CUDA; fused or
/// not), the default directory unless the host chose one. Where the default cannot be
/// written (a read-only home), the kernels are not kept; a host that configured Burn's GPU
/// backends itself keeps its own settings. CPU backends touch nothing.
pub(crate) fn ensure_configured<B: Backend>() {
    if !std::any::type_name::<B>().contains("cubecl") {
        return;
    }
    let mut chosen = CHOSEN.lock().unwrap_or_else(|p| p.into_inner());
    if chosen.is_some() {
        return;
    }
    let dir = default_kernel_cache_dir();
    if check_writable(&dir).is_ok() && install(&dir).is_ok() {
        *chosen = Some(dir);
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// CubeCL opens its compiled-kernel cache with `expect` (a panic on a read-only folder):
/// refuse such a folder here instead, with the reason.
fn check_writable(dir: &Path) -> Result<()> {
    let failed = |source| Error::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let probe = dir.join(format!(".ella-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(failed)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Sets CubeCL's and Burn's process-wide configuration (both can be set only once, and
/// only before their first use).
fn install(dir: &Path) -> Result<()> {
    let cubecl = CubeClRuntimeConfig::storage();
    let burn = BurnConfig::storage();
    let (mut cubecl, mut burn) = (cubecl.lock(), burn.lock());
    if cubecl.is_some() || burn.is_some() {
        return Err(Error::InvalidInput(
            "Burn's GPU backends were configured before ella set their kernel cache (set it \
             before the first GPU tensor is made)"
                .into(),
        ));
    }
    let root = CacheConfig::File(versioned(dir));
    let mut config = CubeClRuntimeConfig::default().override_from_env();
    config.autotune.cache = root.clone();
    config.compilation.cache = Some(root);
    *cubecl = Some(config.into());
    *burn = Some(BurnConfig::default().override_from_env().into());
    Ok(())
}

/// This ella version's folder in a kernel cache directory.
fn versioned(dir: &Path) -> PathBuf {
    dir.join(concat!("ella-", env!("CARGO_PKG_VERSION")))
}

/// What a kernel cache directory holds: one entry per kernel compiled and per autotuned
/// operation (CubeCL appends one line to a `*.json.log` table of contents for each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCacheStats {
    /// Compiled kernels kept (SPIR-V under `vulkan/`, PTX under `cuda/`).
    pub kernels: usize,
    /// Autotune results kept (the fastest kernel of one operation at one shape bucket).
    pub autotune_results: usize,
}

impl KernelCacheStats {
    /// Counts this ella version's entries under `dir` (a kernel cache directory; missing:
    /// all zero). Two counts around a run tell how many kernels it compiled and operations
    /// it autotuned.
    pub fn read(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = &versioned(dir.as_ref());
        Ok(Self {
            kernels: count_entries(&dir.join("vulkan"))? + count_entries(&dir.join("cuda"))?,
            autotune_results: count_entries(&dir.join("autotune"))?,
        })
    }
}

/// Non-empty lines of the `*.json.log` files under `dir`, recursively.
fn count_entries(dir: &Path) -> Result<usize> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            count += count_entries(&path)?;
        } else if path.to_string_lossy().ends_with(".json.log") {
            let text = std::fs::read(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            count += text
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .count();
        }
    }
    Ok(count)
}

/// The Vulkan adapter the wgpu backend would run on (its name and driver), or `None` where
/// Vulkan has none (no GPU driver and no software one such as Mesa's lavapipe). Burn's wgpu
/// backend panics on its first tensor in that case: a host asks here first.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter() -> Option<String> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(descriptor);
    let adapters = cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.first().map(|adapter| {
        let info = adapter.get_info();
        format!("{} ({})", info.name, info.driver)
    })
}
