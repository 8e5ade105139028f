//! Generates `bufbroker.pc` from `bufbroker.pc.in` into `OUT_DIR` (and, when
//! `BUFBROKER_PC_DIR` is set, there too). The prefix comes from `BUFBROKER_PREFIX`
//! (default `/usr/local`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=bufbroker.pc.in");
    println!("cargo:rerun-if-env-changed=BUFBROKER_PREFIX");
    println!("cargo:rerun-if-env-changed=BUFBROKER_PC_DIR");
    let template = match std::fs::read_to_string("bufbroker.pc.in") {
        Ok(t) => t,
        Err(e) => {
            println!("cargo:warning=cannot read bufbroker.pc.in: {e}");
            return;
        }
    };
    let prefix = std::env::var("BUFBROKER_PREFIX").unwrap_or_else(|_| "/usr/local".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let pc = template
        .replace("@PREFIX@", &prefix)
        .replace("@VERSION@", &version);
    let mut dirs: Vec<PathBuf> = std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(std::env::var_os("BUFBROKER_PC_DIR").map(PathBuf::from));
    for dir in dirs {
        if let Err(e) = std::fs::write(dir.join("bufbroker.pc"), &pc) {
            println!(
                "cargo:warning=cannot write bufbroker.pc in {}: {e}",
                dir.display()
            );
        }
    }
}
