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

/// `ella_status_name` gives every status of the header its own name, and the header's
/// values are the library's.
#[test]
fn status_names_are_the_headers() {
    let header = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/ella.h"),
    )
    .unwrap();
    let statuses: Vec<(String, u32)> = header
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("ELLA_STATUS_")?.split_once(" = ")?;
            Some((
                format!("ELLA_STATUS_{name}"),
                value.trim_end_matches(',').parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(statuses.len(), 12, "{statuses:?}");
    for (name, value) in &statuses {
        let named = unsafe { std::ffi::CStr::from_ptr(ella::ella_status_name(*value)) };
        assert_eq!(named.to_str().unwrap(), name);
    }
    let unknown = unsafe { std::ffi::CStr::from_ptr(ella::ella_status_name(99)) };
    assert_eq!(unknown.to_str().unwrap(), "ELLA_STATUS_UNKNOWN");
}
