//! Runs `bufbroker solve` on every combination documented in
//! `examples/participants/README.md` and checks the exit status and the key lines.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bufbroker");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/participants/");

fn solve(args: &[&str]) -> Output {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.ends_with(".toml") {
                format!("{DIR}{a}")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    Command::new(BIN)
        .arg("solve")
        .args(&args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run bufbroker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_lines(out: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(out.contains(w), "missing {w:?} in:\n{out}");
    }
}

/// The first plan row: `# format modifier bytes heap cpu-mapping contig alternatives`.
fn first_plan(out: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no plan row in:\n{out}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn camera_and_cpu_1080p_uses_cma() {
    let o = solve(&[
        "camera.toml",
        "cpu.toml",
        "--request",
        "request-1080p-nv12.toml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    let plan = first_plan(&out);
    assert_eq!(
        &plan[1..7],
        ["NV12", "LINEAR", "3110400", "linux,cma", "cached", "yes"]
    );
    assert_lines(
        &out,
        &[
            "rkisp1 camera:0, CPU:0",
            "plane 1: offset   2073600  stride   1920",
        ],
    );
}

#[test]
fn camera_and_display_1080p_picks_linear_nv12_plane() {
    let o = solve(&[
        "camera.toml",
        "gpu-display.toml",
        "--request",
        "request-1080p-nv12.toml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    let plan = first_plan(&out);
    assert_eq!(
        &plan[1..7],
        ["NV12", "LINEAR", "3110400", "linux,cma", "cached", "yes"]
    );
    assert_lines(&out, &["rkisp1 camera:0, i915 TGL plane:3"]);
}

#[test]
fn decoder_display_cpu_1080p_nv12_then_p010() {
    let o = solve(&[
        "video-decoder.toml",
        "gpu-display.toml",
        "cpu.toml",
        "--request",
        "request-1080p-nv12.toml",
        "--format",
        "NV12,P010",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    let plan = first_plan(&out);
    // 1080 rows rounded up to 1088 (16-row macroblocks): 1920 * 1088 * 3 / 2.
    assert_eq!(
        &plan[1..7],
        ["NV12", "LINEAR", "3133440", "linux,cma", "cached", "yes"]
    );
    assert_lines(
        &out,
        &[" 2  P010      LINEAR                    6266880  linux,cma"],
    );
}

#[test]
fn display_vfio_cpu_4k_uses_a_dmabuf_heap() {
    let o = solve(&[
        "gpu-display.toml",
        "vfio-dma32.toml",
        "cpu.toml",
        "--request",
        "request-4k-xrgb.toml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let plan = first_plan(&stdout(&o));
    assert_eq!(
        &plan[1..7],
        ["XRGB8888", "LINEAR", "33177600", "udmabuf", "cached", "no"]
    );
}

#[test]
fn edu_and_cpu_eight_4k_buffers_fit_256_mib() {
    let o = solve(&["edu.toml", "cpu.toml", "--request", "request-4k-xrgb.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let plan = first_plan(&stdout(&o));
    assert_eq!(&plan[1..5], ["XRGB8888", "LINEAR", "33177600", "memfd"]);
}

#[test]
fn camera_and_display_5mp_conflict_on_stride() {
    let o = solve(&[
        "camera.toml",
        "gpu-display.toml",
        "--request",
        "request-5mp-nv12.toml",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert_lines(
        &out,
        &[
            "unsatisfiable: 4 conflicting constraint(s) (minimal",
            "  - i915 TGL plane: layout.stride_alignment = 64\n",
            "  - rkisp1 camera: formats = NV12:LINEAR\n",
            "  - rkisp1 camera: layout.exact_stride = true | false\n",
            "  - rkisp1 camera: layout.max_height = 3312 (request height 1944) | 1920 (request height 1944)\n",
            "split proposal: two buffers joined by a copy",
            "  group 1: rkisp1 camera\n",
            "  group 2: i915 TGL plane\n",
            "plane 0: offset         0  stride   2624",
        ],
    );
    assert_eq!(out.matches("\n  - ").count(), 4, "{out}");
}

#[test]
fn contiguous_camera_without_cma_is_unsatisfiable() {
    let o = solve(&[
        "camera.toml",
        "cpu.toml",
        "--request",
        "request-1080p-nv12.toml",
        "--heap",
        "memfd",
        "--heap",
        "system",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert_lines(
        &out,
        &[
            "unsatisfiable: 2 conflicting constraint(s) (minimal",
            "  - rkisp1 camera: memory.contiguous = true\n",
            "  - the available heaps: memory.heaps = memfd (cached, scattered); system (cached, scattered, dmabuf)\n",
            "no split into two solvable groups exists",
        ],
    );
}

#[test]
fn edu_window_cannot_hold_nine_4k_buffers() {
    let o = solve(&[
        "edu.toml",
        "cpu.toml",
        "--request",
        "request-4k-xrgb.toml",
        "--count",
        "9",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_lines(
        &stdout(&o),
        &[
            "  - the request: formats = XRGB8888\n",
            "  - qemu edu: memory.address_bits = 28 bits (IOVA below 0x10000000)\n",
            "no split into two solvable groups exists",
        ],
    );
}

#[test]
fn json_output_names_the_conflicts() {
    let o = solve(&[
        "camera.toml",
        "cpu.toml",
        "--request",
        "request-1080p-nv12.toml",
        "--heap",
        "memfd",
        "--heap",
        "system",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["result"], "unsatisfiable");
    assert_eq!(v["diagnostic"]["conflicts"][0]["kind"], "contiguous");
    assert_eq!(v["diagnostic"]["minimal"], true);
}

#[test]
fn unknown_field_is_bad_input_naming_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("bufbroker-solve-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("typo.toml");
    std::fs::write(
        &path,
        "[[participant]]\nid = \"cpu\"\nlabel = \"CPU\"\n[[participant.alternatives]]\n[participant.alternatives.layout]\nstride_align = 64\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args([
            "solve",
            path.to_str().unwrap(),
            "--width",
            "64",
            "--height",
            "64",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("unknown field `stride_align`"), "{err}");
    assert!(o.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
