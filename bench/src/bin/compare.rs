//! Prints side-by-side tables, one per topic, as Markdown: layout queries and allocations of
//! bufbroker against rutabaga's system gralloc and the raw syscalls, requests through the
//! vhost-user device against an echo, throughput against the number of guests, and solver
//! time against participants and candidates. Every table's cases run in interleaved rounds
//! of one process run; figures are medians.
//!
//! `cargo run --release -p bufbroker-bench --bin compare [-- --quick] [--max-guests N]`

use std::time::Duration;

use bufbroker::heap::MemfdHeap;
use bufbroker_bench::roundtrip::{Fleet, Guest, broker, device};
use bufbroker_bench::{
    Case, alloc_cases, compare, human, layout_cases, percentiles, pool, rutabaga_system, solver,
};
use bufbroker_proto::{SolveOptions, solve_with};

/// How long and how often each case runs.
#[derive(Clone, Copy)]
struct Timing {
    rounds: usize,
    round_time: Duration,
}

fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n### {title}\n");
    println!("| {} |", header.join(" | "));
    println!(
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64().max(1e-12))
}

/// The time of the case called `name`, if it ran.
fn time_of(cases: &[Case<'_>], times: &[Duration], name: &str) -> Option<Duration> {
    cases
        .iter()
        .zip(times)
        .find(|(c, _)| c.name == name)
        .map(|(_, t)| *t)
}

fn layout(t: Timing) {
    let mut rows = Vec::new();
    for name in ["NV12", "XRGB8888", "P010"] {
        for (w, h) in [(1280, 720), (1920, 1080), (3840, 2160)] {
            let mut gralloc = rutabaga_system();
            let mut cases = layout_cases(&mut gralloc, name, w, h);
            let times = compare(&mut cases, t.rounds, t.round_time);
            let get = |n: &str| time_of(&cases, &times, n);
            let rutabaga = get("rutabaga get_image_memory_requirements");
            let solve = get("bufbroker solve (cpu, linear)").unwrap_or_default();
            let hit = get("bufbroker plan-cache hit (repeat)").unwrap_or_default();
            let layout = get("bufbroker compute_layout").unwrap_or_default();
            let (r, solve_ratio, hit_ratio) = match rutabaga {
                Some(r) => (human(r), ratio(solve, r), ratio(hit, r)),
                None => ("unsupported".into(), "–".into(), "–".into()),
            };
            rows.push(vec![
                format!("{name} {w}x{h}"),
                r,
                human(layout),
                human(solve),
                human(hit),
                solve_ratio,
                hit_ratio,
            ]);
        }
    }
    print_table(
        "Layout query (linear, CPU only)",
        &[
            "image",
            "rutabaga get_image_memory_requirements",
            "bufbroker compute_layout",
            "bufbroker solve",
            "bufbroker plan-cache hit",
            "solve / rutabaga",
            "hit / rutabaga",
        ],
        &rows,
    );
}

fn allocation(t: Timing) {
    let heap = MemfdHeap::new();
    let pool = pool();
    let mut rows = Vec::new();
    for size in [4u64 << 10, 1 << 20, 8 << 20, 32 << 20] {
        let mut gralloc = rutabaga_system();
        let mut cases = alloc_cases(&mut gralloc, &heap, &pool, size);
        let times = compare(&mut cases, t.rounds, t.round_time);
        let get = |n: &str| time_of(&cases, &times, n).unwrap_or_default();
        let raw = get("raw memfd+ftruncate+fallocate+seals");
        let cold = get("bufbroker memfd heap, cold");
        let recycled = get("bufbroker memfd heap, recycled");
        let unbacked = get("raw memfd+ftruncate (no preallocation)");
        let rutabaga = get("rutabaga allocate_memory (system)");
        rows.push(vec![
            format!("{} KiB", size >> 10),
            human(raw),
            human(cold),
            human(recycled),
            human(unbacked),
            human(rutabaga),
            ratio(cold, raw),
            ratio(rutabaga, recycled),
        ]);
    }
    print_table(
        "Allocate + free",
        &[
            "size",
            "raw memfd+ftruncate+fallocate+seals",
            "bufbroker cold",
            "bufbroker recycled",
            "raw memfd+ftruncate",
            "rutabaga allocate_memory (system)",
            "cold / raw",
            "rutabaga / recycled",
        ],
        &rows,
    );
}

fn round_trip(t: Timing) {
    let recycling = broker(64);
    let cold = broker(0);
    // Devices outlive the guests in the cases (declared first, dropped last).
    let devices = [
        device(&recycling, 256 << 20),
        device(&recycling, 256 << 20),
        device(&recycling, 256 << 20),
        device(&cold, 256 << 20),
    ];
    let mut columns = Vec::new();
    for in_flight in [1u32, 64] {
        let mem = 32 << 20;
        let [mut ping, mut solve, mut recycled, mut fresh] =
            devices.each_ref().map(|d| Guest::connect(d, mem));
        let n = in_flight as usize;
        let mut cases = if in_flight == 1 {
            vec![
                Case::new("ping", move || ping.ping()),
                Case::new("solve", move || solve.solve()),
                Case::new("recycled", move || recycled.allocate_free()),
                Case::new("cold", move || fresh.allocate_free()),
            ]
        } else {
            vec![
                Case::batch("ping", in_flight, move || ping.ping_batch(n)),
                Case::batch("solve", in_flight, move || solve.solve_batch(n)),
                Case::batch("recycled", in_flight, move || {
                    recycled.allocate_free_batch(n)
                }),
                Case::batch("cold", in_flight, move || fresh.allocate_free_batch(n)),
            ]
        };
        columns.push(compare(&mut cases, t.rounds, t.round_time));
    }
    let names = [
        "Ping, 64 bytes echoed (baseline)",
        "Solve, 1080p NV12 (plan-cache hit)",
        "Allocate + Free, 1080p NV12 in the window, recycled (2 requests)",
        "Allocate + Free, 1080p NV12 in the window, cold (2 requests)",
    ];
    let rows: Vec<Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut row = vec![(*name).to_owned()];
            for col in &columns {
                let (Some(&v), Some(&base)) = (col.get(i), col.first()) else {
                    continue;
                };
                row.push(human(v));
                row.push(ratio(v, base));
            }
            row
        })
        .collect();
    print_table(
        "Round trip through the vhost-user device and the real session (per request or pair)",
        &[
            "request",
            "1 in flight",
            "vs ping",
            "64 in flight, per request",
            "vs ping",
        ],
        &rows,
    );
}

fn scaling(t: Timing, max_guests: usize) {
    let counts: Vec<usize> = [1usize, 4, 16, 64, 256]
        .into_iter()
        .filter(|&n| n <= max_guests)
        .collect();
    let broker = broker(16);
    let mut fleet = Fleet::new(&broker, counts.last().copied().unwrap_or(1));
    // Interleaved: every guest count once per round.
    let time = t.round_time * 8;
    let rounds = t.rounds.div_ceil(2);
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); counts.len()];
    for _ in 0..rounds {
        for (&n, s) in counts.iter().zip(&mut samples) {
            s.push(fleet.throughput(n, time));
        }
    }
    let medians: Vec<(f64, f64)> = samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.0.total_cmp(&b.0));
            s.get(s.len() / 2).copied().unwrap_or_default()
        })
        .collect();
    let base = medians.first().map_or(1.0, |m| m.0.max(1e-9));
    let rows: Vec<Vec<String>> = counts
        .iter()
        .zip(&medians)
        .map(|(n, (rate, cores))| {
            vec![
                n.to_string(),
                format!("{rate:.0}"),
                format!("{:.2}×", rate / base),
                format!("{cores:.2}"),
            ]
        })
        .collect();
    print_table(
        &format!(
            "Throughput against guests: Allocate + Free of 1080p NV12 (recycled) in a loop per \
             guest, each guest on its own socket; connecting a guest took {}",
            human(fleet.connect_time)
        ),
        &[
            "guests",
            "allocations/s",
            "vs 1 guest",
            "CPU busy (cores, of 2)",
        ],
        &rows,
    );
}

fn solver_scaling(t: Timing) {
    let heaps = solver::heaps();
    let options = SolveOptions::default();
    let participants = [2usize, 4, 8];
    let candidates = [8usize, 16, 32, 64];
    let requests: Vec<_> = participants
        .iter()
        .flat_map(|&p| candidates.iter().map(move |&c| solver::request(p, c)))
        .collect();
    let mut cases: Vec<Case<'_>> = requests
        .iter()
        .map(|r| {
            let heaps = &heaps;
            let options = &options;
            Case::new("solve", move || {
                std::hint::black_box(solve_with(r, heaps, options).is_ok());
            })
        })
        .collect();
    let times = compare(&mut cases, t.rounds, t.round_time);
    let rows: Vec<Vec<String>> = participants
        .iter()
        .zip(times.chunks(candidates.len()))
        .map(|(p, ts)| {
            let mut row = vec![format!("{p} participants × 3 alternatives")];
            row.extend(ts.iter().map(|t| human(*t)));
            row
        })
        .collect();
    print_table(
        "Solver time (median) against participants and (format, modifier) candidates",
        &["", "8", "16", "32", "64"],
        &rows,
    );
    let big = solver::request(8, 64);
    let ps = percentiles(2000, &[50, 90, 99], || {
        std::hint::black_box(solve_with(&big, &heaps, &options).is_ok());
    });
    if let [p50, p90, p99] = ps[..] {
        println!(
            "\n8 participants × 64 candidates × 3 alternatives, single solves: p50 {}, p90 {}, p99 {}",
            human(p50),
            human(p90),
            human(p99)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let max_guests = args
        .iter()
        .position(|a| a == "--max-guests")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let t = if quick {
        Timing {
            rounds: 3,
            round_time: Duration::from_millis(5),
        }
    } else {
        Timing {
            rounds: 11,
            round_time: Duration::from_millis(40),
        }
    };
    println!(
        "bufbroker compare: median of {} interleaved rounds of ~{:?} per case",
        t.rounds, t.round_time
    );
    layout(t);
    allocation(t);
    round_trip(t);
    scaling(t, max_guests);
    solver_scaling(t);
}
