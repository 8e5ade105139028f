//! The checked-in `include/bufbroker.h` is what cbindgen generates from `src/lib.rs`.
//! After changing the API, regenerate it with
//! `BUFBROKER_BLESS=1 cargo test -p bufbroker-guest-capi --test header`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn checked_in_header_matches_cbindgen_output() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .unwrap()
        .write(&mut generated);
    let path = crate_dir.join("include/bufbroker.h");

    if std::env::var_os("BUFBROKER_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();

    assert!(
        checked_in == generated,
        "{} is out of date: run BUFBROKER_BLESS=1 cargo test -p bufbroker-guest-capi --test header",
        path.display()
    );
}
