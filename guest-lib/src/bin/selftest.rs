//! `bufbroker-guest-selftest`: inside a Linux guest with the bufbroker virtio device, runs the
//! client end to end through the userspace virtio-pci driver and prints one
//! `BUFBROKER-RESULT <name> <pass|fail> <seconds>` line per step (the e2e runner's format).
//!
//! ```text
//! bufbroker-guest-selftest [--pings N] [--bdf ADDR] [--virtio-id ID] [--timeout SECS]
//!                          [--socket PATH | --fake] [--grant OWNER] [--wait PATH]
//!                          [--bench N] [--guest-ram] [--hold N] [--fill N [--expect-quota]]
//! ```
//!
//! Steps: `guest:open` (find, unbind, init the device), `guest:hello`, `guest:ping` (N pings,
//! timing printed), `guest:solve`, `guest:allocate-nv12-window` (NV12 1920x1080, host
//! window), `guest:pattern` (write and read back through the window mapping), `guest:free`.
//! A failed step makes the later ones fail too. Exit status 0 only if all passed. `--socket`
//! and `--fake` run the same steps over the local socket or the in-process fake broker.
//!
//! For the host side of `tests/e2e/qemu-scenarios.sh`:
//! - `--grant OWNER`: after `guest:pattern`, `guest:export` exports the buffer, grants it to
//!   OWNER (read only) and prints `BUFBROKER-EXPORT <uuid> <size>`; the pattern is byte
//!   `i` = `(i * 7 + 3) mod 256`.
//! - `--wait PATH`: before `guest:free`, `guest:host-sync` reads PATH (a serial port the host
//!   writes to) until a line `done` arrives, so the buffer lives while the host checks it.
//! - `--bench N`: after `guest:free`, `guest:round-trips` times N echoes (`Ping`), N solves and
//!   N allocate/free pairs (host window: a SHMEM_MAP per buffer, or a slice of an arena mapped
//!   once, as the broker is configured) and prints their medians as ratios to the echo's.
//! - `--guest-ram`: only `guest:hello` and `guest:guest-ram`, which allocates an NV12 320x240 buffer
//!   with `Placement::GuestRam` over this process's own locked pages (guest-physical ranges
//!   from `/proc/self/pagemap`), writes the pattern into them, tries an export (printed); with
//!   `--grant` grants it and prints `BUFBROKER-GUESTRAM-EXPORT <uuid> <size>`, with `--wait`
//!   holds it until the host says `done`; then frees it.
//! - `--hold N`: only `guest:hello` and `guest:hold` (N host-window buffers allocated),
//!   prints `BUFBROKER-HOLDING N`, waits on `--wait` and exits without freeing (dropping the
//!   transport resets the device).
//! - `--fill N`: only `guest:hello` and `guest:fill`: allocates up to N buffers, stopping at
//!   the first refusal; passes if all N succeed, or with `--expect-quota` if at least one
//!   succeeds and then the broker refuses with `QUOTA_EXCEEDED`; with `--wait`, holds the
//!   buffers until the host says `done`, then frees them.
//!
//! Link it statically for an initramfs: `RUSTFLAGS="-C target-feature=+crt-static"`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bufbroker_guest::bufbroker_proto::constraint::Usage;
use bufbroker_guest::bufbroker_proto::wire::{Access, ErrorCode, Features, Placement, SolveReply};
use bufbroker_guest::bufbroker_proto::{Fourcc, Request};
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::virtio_pci::{VirtioPciOptions, VirtioPciTransport};
use bufbroker_guest::{Client, ClientError, ClientOptions, Transport, participants};

struct Report {
    failed: bool,
}

impl Report {
    /// Runs `f` as step `name` unless an earlier step failed; prints the result line.
    fn step<R>(&mut self, name: &str, f: impl FnOnce() -> Result<R, String>) -> Option<R> {
        let t0 = Instant::now();
        let result = if self.failed {
            Err("an earlier step failed".to_owned())
        } else {
            f()
        };
        let secs = t0.elapsed().as_secs_f64();
        match result {
            Ok(r) => {
                println!("BUFBROKER-RESULT {name} pass {secs:.2}");
                Some(r)
            }
            Err(e) => {
                println!("{name}: {e}");
                println!("BUFBROKER-RESULT {name} fail {secs:.2}");
                self.failed = true;
                None
            }
        }
    }
}

/// What the run does beyond the basic steps (see the module docs).
#[derive(Default)]
struct Extra {
    grant: Option<String>,
    wait: Option<String>,
    bench: u32,
    guest_ram: bool,
    hold: u32,
    fill: u32,
    expect_quota: bool,
}

/// NV12 1920x1080 for the CPU.
fn nv12_request() -> Request {
    Request {
        width: 1920,
        height: 1080,
        formats: vec![Fourcc::from_chars(*b"NV12")],
        usage: Usage::CPU_WRITE,
        participants: vec![participants::cpu()],
        count: 1,
    }
}

/// The pattern the host checks: byte `i` is `(i * 7 + 3) mod 256`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7).wrapping_add(3)) as u8)
        .collect()
}

fn run<T: Transport>(report: &mut Report, transport: Option<T>, pings: u32, extra: &Extra) {
    let mut client = report.step("guest:hello", || {
        let t = transport.ok_or("no transport")?;
        let mut options = ClientOptions::default();
        if extra.guest_ram {
            // Not in the library's defaults: it builds no guest-physical ranges itself.
            options.features |= Features::GUEST_RAM;
        }
        let c = Client::connect(t, &options).map_err(|e| chain(&e))?;
        let s = c.session();
        println!(
            "session: version {} features {:#x} broker {:?}",
            s.version,
            s.features.bits(),
            s.broker
        );
        Ok(c)
    });
    if extra.hold > 0 {
        hold(report, client.as_mut(), extra);
        return;
    }
    if extra.fill > 0 {
        fill(report, client.as_mut(), extra);
        return;
    }
    if extra.guest_ram {
        report.step("guest:guest-ram", || {
            guest_ram(client.as_mut().ok_or("no client")?, extra)
        });
        return;
    }
    report.step("guest:ping", || {
        let c = client.as_mut().ok_or("no client")?;
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..pings {
            times.push(c.ping(&i.to_le_bytes()).map_err(|e| chain(&e))?);
        }
        times.sort();
        let pick = |q: usize| times.get(times.len().saturating_sub(1) * q / 100).copied();
        println!(
            "ping x{pings}: median {:?} p99 {:?} max {:?}",
            pick(50).unwrap_or_default(),
            pick(99).unwrap_or_default(),
            times.last().copied().unwrap_or_default()
        );
        Ok(())
    });
    let request = nv12_request();
    report.step("guest:solve", || {
        let c = client.as_mut().ok_or("no client")?;
        match c.solve(&request).map_err(|e| chain(&e))? {
            SolveReply::Solved(s) => {
                let p = s.plans.first().ok_or("no plan")?;
                println!(
                    "solve: {} plans; best {} size {}",
                    s.plans.len(),
                    p.fourcc,
                    p.size
                );
                Ok(())
            }
            SolveReply::Unsatisfiable(d) => Err(format!("unsatisfiable: {d}")),
        }
    });
    let alloc = report.step("guest:allocate-nv12-window", || {
        let c = client.as_mut().ok_or("no client")?;
        let a = c
            .allocate(&request, Placement::HostWindow)
            .map_err(|e| chain(&e))?;
        println!(
            "allocate: {:?} size {}",
            a.buffers.first().map(|b| b.info),
            a.plan.size
        );
        Ok(a)
    });
    report.step("guest:pattern", || {
        let c = client.as_ref().ok_or("no client")?;
        let a = alloc.as_ref().ok_or("no allocation")?;
        let b = a.buffers.first().ok_or("no buffer")?;
        let map = c.map(b, &a.plan).map_err(|e| chain(&e))?;
        let pattern = pattern(map.len());
        map.write_at(0, &pattern).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; map.len()];
        map.read_at(0, &mut back).map_err(|e| e.to_string())?;
        if back != pattern {
            return Err("read back differs from the pattern".into());
        }
        println!(
            "pattern: {} bytes written and read back through the window",
            map.len()
        );
        Ok(())
    });
    if let Some(grantee) = &extra.grant {
        report.step("guest:export", || {
            let c = client.as_mut().ok_or("no client")?;
            let a = alloc.as_ref().ok_or("no allocation")?;
            let b = a.buffers.first().ok_or("no buffer")?;
            let uuid = c.export(b.id()).map_err(|e| chain(&e))?;
            let granted = c
                .grant(b.id(), grantee, Access::ReadOnly)
                .map_err(|e| chain(&e))?;
            if granted != uuid {
                return Err(format!("grant answered UUID {granted}, export {uuid}"));
            }
            println!("BUFBROKER-EXPORT {uuid} {}", a.plan.size);
            Ok(())
        });
    }
    if let Some(path) = &extra.wait {
        report.step("guest:host-sync", || wait_done(path));
    }
    report.step("guest:free", || {
        let c = client.as_mut().ok_or("no client")?;
        let a = alloc.ok_or("no allocation")?;
        for b in &a.buffers {
            c.free(b.id()).map_err(|e| chain(&e))?;
        }
        Ok(())
    });
    if extra.bench > 0 {
        report.step("guest:round-trips", || {
            bench(client.as_mut().ok_or("no client")?, &request, extra.bench)
        });
    }
}

/// Times echo, solve and allocate/free round trips; prints medians and ratios to the echo.
fn bench<T: Transport>(c: &mut Client<T>, request: &Request, n: u32) -> Result<(), String> {
    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    let (mut echo, mut solve, mut alloc, mut free) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let t = Instant::now();
        c.ping(&i.to_le_bytes()).map_err(|e| chain(&e))?;
        echo.push(t.elapsed());
        let t = Instant::now();
        c.solve(request).map_err(|e| chain(&e))?;
        solve.push(t.elapsed());
        let t = Instant::now();
        let a = c
            .allocate(request, Placement::HostWindow)
            .map_err(|e| chain(&e))?;
        alloc.push(t.elapsed());
        let t = Instant::now();
        for b in &a.buffers {
            c.free(b.id()).map_err(|e| chain(&e))?;
        }
        free.push(t.elapsed());
    }
    let e = median(echo);
    let ratio = |d: Duration| d.as_secs_f64() / e.as_secs_f64().max(1e-9);
    println!("round trips x{n} (medians, one request in flight):");
    println!("  echo     {e:>10.1?}  1.0x");
    for (name, d) in [
        ("solve", median(solve)),
        ("allocate", median(alloc)),
        ("free", median(free)),
    ] {
        println!("  {name:<8} {d:>10.1?}  {:.1}x", ratio(d));
    }
    Ok(())
}

/// `Placement::GuestRam`: an NV12 320x240 buffer made of this process's own locked pages
/// (small enough for the 256-range limit however scattered the pages are), the pattern
/// written into them, then an export attempt (printed: sharing needs `/dev/udmabuf` on the
/// host) and free.
fn guest_ram<T: Transport>(c: &mut Client<T>, extra: &Extra) -> Result<(), String> {
    use bufbroker_guest::bufbroker_proto::wire::{GuestRange, Location};
    use bufbroker_guest::virtio_pci::dma::{DmaMemory, PAGE_SIZE};
    let request = Request {
        width: 320,
        height: 240,
        ..nv12_request()
    };
    let size = match c.solve(&request).map_err(|e| chain(&e))? {
        SolveReply::Solved(s) => s.plans.first().ok_or("no plan")?.size,
        SolveReply::Unsatisfiable(d) => return Err(format!("unsatisfiable: {d}")),
    };
    let len = usize::try_from(size)
        .map_err(|e| e.to_string())?
        .div_ceil(PAGE_SIZE)
        * PAGE_SIZE;
    let mem = DmaMemory::new(len).map_err(|e| chain(&e))?;
    let ranges: Vec<GuestRange> = mem
        .runs(0, len)
        .ok_or("no physical addresses")?
        .into_iter()
        .map(|(addr, l)| GuestRange {
            addr,
            len: u64::from(l),
        })
        .collect();
    let n = ranges.len();
    let a = c
        .allocate(&request, Placement::GuestRam { ranges })
        .map_err(|e| chain(&e))?;
    let b = a.buffers.first().ok_or("no buffer")?;
    if b.info.location != Location::GuestRam {
        return Err(format!("location {:?}", b.info.location));
    }
    let data = pattern(len);
    if !mem.write_bytes(0, &data) {
        return Err("pattern out of bounds".into());
    }
    println!(
        "guest-ram: {} bytes in {n} guest-physical ranges of this process's pages, {}",
        a.plan.size,
        b.id()
    );
    match c.export(b.id()) {
        Ok(uuid) => {
            println!("guest-ram: exported as {uuid}");
            if let Some(grantee) = &extra.grant {
                c.grant(b.id(), grantee, Access::ReadOnly)
                    .map_err(|e| chain(&e))?;
                println!("BUFBROKER-GUESTRAM-EXPORT {uuid} {}", a.plan.size);
                if let Some(path) = &extra.wait {
                    wait_done(path)?;
                }
            }
        }
        Err(e) => println!("guest-ram: export refused: {}", chain(&e)),
    }
    c.free(b.id()).map_err(|e| chain(&e))?;
    drop(mem);
    Ok(())
}

/// Reads `path` line by line until one says `done`.
fn wait_done(path: &str) -> Result<(), String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    println!("BUFBROKER-WAITING {path}");
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        if line.trim() == "done" {
            return Ok(());
        }
    }
    Err(format!("{path} ended before a line \"done\""))
}

/// `--hold N`: allocate N buffers, say so, wait, leave without freeing.
fn hold<T: Transport>(report: &mut Report, client: Option<&mut Client<T>>, extra: &Extra) {
    let request = nv12_request();
    let mut held = Vec::new();
    report.step("guest:hold", || {
        let c = client.ok_or("no client")?;
        for _ in 0..extra.hold {
            held.push(
                c.allocate(&request, Placement::HostWindow)
                    .map_err(|e| chain(&e))?,
            );
        }
        println!("BUFBROKER-HOLDING {}", held.len());
        match &extra.wait {
            Some(path) => wait_done(path),
            None => Ok(()),
        }
    });
}

/// `--fill N`: allocate until N buffers or the first refusal.
fn fill<T: Transport>(report: &mut Report, client: Option<&mut Client<T>>, extra: &Extra) {
    let request = nv12_request();
    report.step("guest:fill", || {
        let c = client.ok_or("no client")?;
        let mut held = Vec::new();
        let mut refusal = None;
        for _ in 0..extra.fill {
            match c.allocate(&request, Placement::HostWindow) {
                Ok(a) => held.push(a),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        println!("fill: {} of {} allocated", held.len(), extra.fill);
        let mut result = match (&refusal, extra.expect_quota) {
            (None, false) => Ok(()),
            (None, true) => Err("no refusal: the quota was not enforced".to_owned()),
            (Some(e), false) => Err(chain(e)),
            (Some(e), true) => {
                println!("fill: refused as expected: {}", chain(e));
                match e {
                    ClientError::Broker { code, .. }
                        if *code == ErrorCode::QUOTA_EXCEEDED && !held.is_empty() =>
                    {
                        Ok(())
                    }
                    _ => Err("expected QUOTA_EXCEEDED after at least one buffer".to_owned()),
                }
            }
        };
        if let (Ok(()), Some(path)) = (&result, &extra.wait) {
            result = wait_done(path);
        }
        for a in &held {
            for b in &a.buffers {
                c.free(b.id()).map_err(|e| chain(&e))?;
            }
        }
        result
    });
}

fn chain(e: &dyn std::error::Error) -> String {
    bufbroker_guest::bufbroker_proto::wire::error_chain(e)
}

fn main() -> ExitCode {
    let mut options = VirtioPciOptions::default();
    let mut pings = 100u32;
    let mut mode = "device";
    let mut socket = None;
    let mut extra = Extra::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--pings" => pings = value().parse().unwrap_or(100),
            "--bdf" => options.bdf = Some(value()),
            "--virtio-id" => {
                let id = value().parse().unwrap_or(37);
                options = VirtioPciOptions {
                    bdf: options.bdf,
                    ..VirtioPciOptions::for_virtio_id(id)
                };
            }
            "--timeout" => {
                options.timeout = Duration::from_secs(value().parse().unwrap_or(10));
            }
            "--socket" => {
                mode = "socket";
                socket = Some(value());
            }
            "--fake" => mode = "fake",
            "--grant" => extra.grant = Some(value()),
            "--wait" => extra.wait = Some(value()),
            "--bench" => extra.bench = value().parse().unwrap_or(0),
            "--guest-ram" => extra.guest_ram = true,
            "--hold" => extra.hold = value().parse().unwrap_or(0),
            "--fill" => extra.fill = value().parse().unwrap_or(0),
            "--expect-quota" => extra.expect_quota = true,
            other => {
                eprintln!("unknown argument {other}; see the binary's documentation");
                return ExitCode::from(2);
            }
        }
    }
    let mut report = Report { failed: false };
    match mode {
        "fake" => {
            let t = report.step("guest:open", || {
                FakeTransport::new(FakeBroker::new(), 64 << 20).map_err(|e| chain(&e))
            });
            run(&mut report, t, pings, &extra);
        }
        "socket" => {
            let t = report.step("guest:open", || {
                let path = socket.clone().unwrap_or_default();
                LocalTransport::connect(path.as_ref()).map_err(|e| chain(&e))
            });
            run(&mut report, t, pings, &extra);
        }
        _ => {
            let t = report.step("guest:open", || {
                let t = VirtioPciTransport::open(&options).map_err(|e| chain(&e))?;
                println!("device {}: config {:?}", t.bdf(), t.config());
                Ok(t)
            });
            run(&mut report, t, pings, &extra);
        }
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
