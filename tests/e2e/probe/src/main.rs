//! Lists `/dev` (and the folders the broker cares about) from inside the e2e guest, so the
//! runner can show that a statically linked Rust binary starts there. Exits 0 when `/dev` is
//! readable, 1 otherwise.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;

fn kind(ft: fs::FileType) -> &'static str {
    if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "link"
    } else {
        "other"
    }
}

fn list(dir: &Path) -> io::Result<Vec<(String, &'static str)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        out.push((entry.file_name().to_string_lossy().into_owned(), kind(entry.file_type()?)));
    }
    out.sort();
    Ok(out)
}

fn main() -> ExitCode {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("probe: kernel {}", release.trim());
    let entries = match list(Path::new("/dev")) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("probe: cannot list /dev: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line: Vec<String> = entries.iter().map(|(n, k)| format!("{n}({k})")).collect();
    println!("probe: /dev has {} entries: {}", entries.len(), line.join(" "));
    for sub in ["/dev/dma_heap", "/dev/vfio"] {
        match list(Path::new(sub)) {
            Ok(e) => {
                let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
                println!("probe: {sub}: {}", names.join(" "));
            }
            Err(e) => println!("probe: {sub}: {e}"),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    //! Run inside the guest by selftest.sh through `e2e_libtest`, to show that a statically
    //! linked `cargo test` binary reports one result per test.

    use super::*;

    #[test]
    fn dev_null_is_a_char_device() {
        let meta = fs::metadata("/dev/null").map(|m| m.file_type().is_char_device());
        assert!(matches!(meta, Ok(true)), "{meta:?}");
    }

    #[test]
    fn lists_dev() {
        let entries = list(Path::new("/dev"));
        assert!(entries.is_ok_and(|e| e.iter().any(|(n, _)| n == "null")));
    }

    #[test]
    #[ignore = "example of a test the guest reports as skipped"]
    fn ignored_example() {}
}
