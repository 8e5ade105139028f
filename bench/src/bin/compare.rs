//! Prints side-by-side tables: layout queries and allocations of bufbroker against rutabaga's
//! system gralloc and the raw syscalls, measured in interleaved rounds of one process run.
//!
//! `cargo run --release -p bufbroker-bench --bin compare [-- --quick]`

use std::time::Duration;

use bufbroker::heap::MemfdHeap;
use bufbroker_bench::{Case, alloc_cases, compare, human, layout_cases, pool, rutabaga_system};

fn table(title: &str, cases: &mut [Case<'_>], rounds: usize, round_time: Duration) {
    let times = compare(cases, rounds, round_time);
    let base = times
        .first()
        .copied()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-12);
    println!("\n{title}");
    println!("{:<42} {:>12} {:>9}", "case", "median", "ratio");
    for (c, t) in cases.iter().zip(&times) {
        println!(
            "{:<42} {:>12} {:>8.2}x",
            c.name,
            human(*t),
            t.as_secs_f64() / base
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, round_time) = if quick {
        (3, Duration::from_millis(5))
    } else {
        (11, Duration::from_millis(40))
    };
    println!("bufbroker compare: median of {rounds} interleaved rounds; ratio to the first row");
    for (name, w, h) in [
        ("NV12", 1280, 720),
        ("NV12", 1920, 1080),
        ("NV12", 3840, 2160),
        ("XRGB8888", 1280, 720),
        ("XRGB8888", 1920, 1080),
        ("XRGB8888", 3840, 2160),
        ("P010", 1920, 1080),
    ] {
        let mut gralloc = rutabaga_system();
        let mut cases = layout_cases(&mut gralloc, name, w, h);
        let note = if cases.len() == 2 {
            " (rutabaga: format unsupported)"
        } else {
            ""
        };
        table(
            &format!("layout query {name} {w}x{h}{note}"),
            &mut cases,
            rounds,
            round_time,
        );
    }
    let heap = MemfdHeap::new();
    let pool = pool();
    for size in [4u64 << 10, 1 << 20, 8 << 20, 32 << 20] {
        let mut gralloc = rutabaga_system();
        let mut cases = alloc_cases(&mut gralloc, &heap, &pool, size);
        table(
            &format!("allocate + free, {} KiB", size >> 10),
            &mut cases,
            rounds,
            round_time,
        );
    }
}
