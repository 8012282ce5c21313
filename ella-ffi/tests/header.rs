//! `include/ella.h` must be what cbindgen generates from the source now.
//! Regenerate it with `ELLA_BLESS=1 cargo test -p ella-ffi --test header`.

use std::path::PathBuf;

#[test]
fn header_is_up_to_date() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let header_path = crate_dir.join("../include/ella.h");
    if std::env::var_os("ELLA_BLESS").is_some() {
        std::fs::write(&header_path, &generated).unwrap();
    }
    let committed = std::fs::read(&header_path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ella.h is out of date; run `ELLA_BLESS=1 cargo test -p ella-ffi --test header` and commit it"
    );
}
