//! `bufbroker solve`: constraint files in, ranked plans or a diagnostic out.
//!
//! Exit status: 0 solvable, 1 unsatisfiable, 2 bad input.

use std::fmt::Write as _;
use std::process::ExitCode;

use bufbroker_proto::constraint::Usage;
use bufbroker_proto::solver::{Diagnostic, Solution, SolveError, SolveOptions};
use bufbroker_proto::{Fourcc, HeapInfo, Plan, Request, solve_with};
use serde::Serialize;
use thiserror::Error;

use crate::args::SolveArgs;
use crate::constraints_file::{self, ConstraintFileError, RequestSpec};

/// Errors of `bufbroker solve` that mean bad input (exit status 2).
#[derive(Debug, Error)]
pub enum SolveCommandError {
    /// A constraint or request file is wrong.
    #[error(transparent)]
    File(#[from] ConstraintFileError),
    /// A flag is wrong.
    #[error("{0}")]
    Flag(String),
    /// The solver refused the request as malformed.
    #[error("invalid request")]
    Request(#[source] SolveError),
}

/// Default heaps: a typical Linux host with a CMA area.
const DEFAULT_HEAPS: [&str; 4] = ["memfd", "udmabuf", "system", "linux,cma"];

/// Exit status of a solvable request.
pub const EXIT_SOLVED: u8 = 0;
/// Exit status of an unsatisfiable request.
pub const EXIT_UNSATISFIABLE: u8 = 1;
/// Exit status of bad input.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Runs the command, printing to stdout (results) and stderr (errors).
pub fn run(args: &SolveArgs) -> ExitCode {
    match solve_files(args) {
        Ok((text, code)) => {
            print!("{text}");
            ExitCode::from(code)
        }
        Err(e) => {
            let mut msg = format!("bufbroker solve: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = write!(msg, ": {s}");
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Loads the files, solves, and renders the output with its exit status.
pub fn solve_files(args: &SolveArgs) -> Result<(String, u8), SolveCommandError> {
    let mut participants = Vec::new();
    let mut spec = RequestSpec::default();
    if let Some(path) = &args.request {
        if let Some(r) = constraints_file::load(path)?.request {
            spec = r;
        }
    }
    for path in &args.files {
        let file = constraints_file::load(path)?;
        participants.extend(file.participant);
        if args.request.is_none() {
            if let Some(r) = file.request {
                spec = r;
            }
        }
    }
    let request = build_request(args, spec, participants)?;
    let heaps = heaps(&args.heaps)?;
    let options = SolveOptions {
        max_plans: args.max_plans.max(1),
        ..SolveOptions::default()
    };
    match solve_with(&request, &heaps, &options) {
        Ok(solution) => Ok((
            render_solution(args.json, &request, &heaps, &solution),
            EXIT_SOLVED,
        )),
        Err(SolveError::Unsatisfiable(d)) => Ok((
            render_diagnostic(args.json, &request, &heaps, &d),
            EXIT_UNSATISFIABLE,
        )),
        Err(e @ SolveError::UnknownRequiredExtension { .. }) => {
            let text = if args.json {
                json(&JsonOutput::Error {
                    error: e.to_string(),
                })
            } else {
                format!("unsatisfiable: {e}\n")
            };
            Ok((text, EXIT_UNSATISFIABLE))
        }
        Err(e) => Err(SolveCommandError::Request(e)),
    }
}

fn build_request(
    args: &SolveArgs,
    spec: RequestSpec,
    participants: Vec<bufbroker_proto::Participant>,
) -> Result<Request, SolveCommandError> {
    let flag = |m: &str| SolveCommandError::Flag(m.to_owned());
    let width = args
        .width
        .or(spec.width)
        .ok_or_else(|| flag("--width is required (or width in a [request] table)"))?;
    let height = args
        .height
        .or(spec.height)
        .ok_or_else(|| flag("--height is required (or height in a [request] table)"))?;
    let formats = if args.formats.is_empty() {
        spec.formats.clone()
    } else {
        args.formats
            .iter()
            .map(|f| {
                f.parse::<Fourcc>()
                    .map_err(|e| SolveCommandError::Flag(format!("--format: {e}")))
            })
            .collect::<Result<_, _>>()?
    };
    let mut usage = spec
        .usage_flags()
        .map_err(|e| SolveCommandError::Flag(format!("[request] usage: {e}")))?;
    if let Some(u) = &args.usage {
        usage |=
            Usage::parse_list(u).map_err(|e| SolveCommandError::Flag(format!("--usage: {e}")))?;
    }
    Ok(Request {
        width,
        height,
        formats,
        usage,
        participants,
        count: args.count.or(spec.count).unwrap_or(1),
    })
}

fn heaps(names: &[String]) -> Result<Vec<HeapInfo>, SolveCommandError> {
    let names: Vec<&str> = if names.is_empty() {
        DEFAULT_HEAPS.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    names
        .iter()
        .map(|n| {
            HeapInfo::well_known(n)
                .ok_or_else(|| SolveCommandError::Flag(format!("--heap: unknown heap {n:?}")))
        })
        .collect()
}

#[derive(Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
enum JsonOutput<'a> {
    Solved {
        heaps: Vec<&'a str>,
        solution: &'a Solution,
    },
    Unsatisfiable {
        heaps: Vec<&'a str>,
        diagnostic: &'a Diagnostic,
        explanation: String,
    },
    Error {
        error: String,
    },
}

fn json(out: &JsonOutput<'_>) -> String {
    let mut s =
        serde_json::to_string_pretty(out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

fn header(out: &mut String, request: &Request, heaps: &[HeapInfo]) {
    let formats: Vec<String> = request.formats.iter().map(|f| f.to_string()).collect();
    let _ = writeln!(
        out,
        "request: {}x{}, formats {}, usage {}, count {}",
        request.width,
        request.height,
        if formats.is_empty() {
            "any".into()
        } else {
            formats.join(", ")
        },
        request.usage,
        request.count
    );
    let names: Vec<&str> = heaps.iter().map(|h| h.name.as_str()).collect();
    let _ = writeln!(out, "heaps: {}", names.join(", "));
    for (i, p) in request.participants.iter().enumerate() {
        let _ = writeln!(
            out,
            "participant {i}: {} ({}), {} alternative(s)",
            p.label,
            p.id,
            p.alternatives.len()
        );
    }
}

fn render_solution(
    as_json: bool,
    request: &Request,
    heaps: &[HeapInfo],
    solution: &Solution,
) -> String {
    if as_json {
        return json(&JsonOutput::Solved {
            heaps: heaps.iter().map(|h| h.name.as_str()).collect(),
            solution,
        });
    }
    let mut out = String::new();
    header(&mut out, request, heaps);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>2}  {:<9} {:<22} {:>10}  {:<10} {:<15} {:<6} alternatives",
        "#", "format", "modifier", "bytes", "heap", "cpu mapping", "contig"
    );
    for (i, plan) in solution.plans.iter().enumerate() {
        render_plan(&mut out, i + 1, request, plan);
    }
    for e in &solution.ignored_extensions {
        let _ = writeln!(
            out,
            "note: participant {} alternative {}: extension (vendor {:#x}, code {:#x}) {}",
            e.participant,
            e.alternative,
            e.vendor,
            e.code,
            if e.required {
                "is required and not understood; alternative skipped"
            } else {
                "is optional and not understood; ignored"
            }
        );
    }
    out
}

fn render_plan(out: &mut String, rank: usize, request: &Request, plan: &Plan) {
    let everyone: Vec<u32> = (0..request.participants.len() as u32).collect();
    render_group_plan(out, rank, request, &everyone, plan);
}

/// Renders a plan whose `alternatives` follow `members` (participant indices).
fn render_group_plan(
    out: &mut String,
    rank: usize,
    request: &Request,
    members: &[u32],
    plan: &Plan,
) {
    let alts: Vec<String> = members
        .iter()
        .zip(&plan.alternatives)
        .filter_map(|(&i, a)| {
            request
                .participants
                .get(i as usize)
                .map(|p| format!("{}:{a}", p.label))
        })
        .collect();
    let _ = writeln!(
        out,
        "{:>2}  {:<9} {:<22} {:>10}  {:<10} {:<15} {:<6} {}",
        rank,
        plan.fourcc.to_string(),
        plan.modifier.to_string(),
        plan.size,
        plan.heap,
        plan.cache_mode.to_string(),
        if plan.contiguous { "yes" } else { "no" },
        alts.join(", ")
    );
    for (i, pl) in plan.planes.iter().enumerate() {
        let _ = writeln!(
            out,
            "      plane {i}: offset {:>9}  stride {:>6}  size {:>9}",
            pl.offset, pl.stride, pl.size
        );
    }
}

fn render_diagnostic(
    as_json: bool,
    request: &Request,
    heaps: &[HeapInfo],
    d: &Diagnostic,
) -> String {
    if as_json {
        return json(&JsonOutput::Unsatisfiable {
            heaps: heaps.iter().map(|h| h.name.as_str()).collect(),
            diagnostic: d,
            explanation: d.to_string(),
        });
    }
    let mut out = String::new();
    header(&mut out, request, heaps);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "unsatisfiable: {} conflicting constraint(s){}:",
        d.conflicts.len(),
        if d.minimal {
            " (minimal: dropping any one makes the request solvable)"
        } else {
            ""
        }
    );
    for c in &d.conflicts {
        let _ = writeln!(out, "  - {c}");
    }
    for n in &d.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if let Some(split) = &d.split {
        let names = |g: &[u32]| -> String {
            g.iter()
                .filter_map(|&i| {
                    request
                        .participants
                        .get(i as usize)
                        .map(|p| p.label.clone())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "\nsplit proposal: two buffers joined by a copy (shadow buffer)"
        );
        let _ = writeln!(out, "  group 1: {}", names(&split.first));
        render_group_plan(&mut out, 1, request, &split.first, &split.first_plan);
        let _ = writeln!(out, "  group 2: {}", names(&split.second));
        render_group_plan(&mut out, 2, request, &split.second, &split.second_plan);
    } else {
        let _ = writeln!(out, "\nno split into two solvable groups exists");
    }
    out
}
