//! Whether this machine can run the wgpu tests (shared by ella-core's and ella-ffi's tests).

use std::io::Write;
use std::sync::OnceLock;

/// Set (to anything) in CI: a machine without a Vulkan adapter then fails the wgpu tests
/// instead of skipping them, so CI always runs them.
pub const REQUIRE_WGPU: &str = "ELLA_REQUIRE_WGPU";

/// True where Vulkan has an adapter. Where it has none, the wgpu tests return early: the
/// reason is written once per test binary straight to the terminal (past the test
/// harness's output capture, so a skipped run is visible), or, with [`REQUIRE_WGPU`] set,
/// they fail.
pub fn wgpu_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    let usable = *USABLE.get_or_init(|| {
        let usable = ella_core::gpu::wgpu_adapter().is_some();
        if !usable && std::env::var_os(REQUIRE_WGPU).is_none() {
            let _ = writeln!(
                std::io::stderr(),
                "note: wgpu tests SKIPPED: Vulkan has no adapter on this machine (install a \
                 GPU driver or Mesa's software one: apt-get install mesa-vulkan-drivers \
                 libvulkan1); {REQUIRE_WGPU}=1 makes this a failure"
            );
        }
        usable
    });
    assert!(
        usable || std::env::var_os(REQUIRE_WGPU).is_none(),
        "{REQUIRE_WGPU} is set but Vulkan has no adapter on this machine"
    );
    usable
}
