//! `bufbroker-guest-selftest`: inside a Linux guest with the bufbroker virtio device, runs the
//! client end to end through the userspace virtio-pci driver and prints one
//! `BUFBROKER-RESULT <name> <pass|fail> <seconds>` line per step (the e2e runner's format).
//!
//! ```text
//! bufbroker-guest-selftest [--pings N] [--bdf ADDR] [--virtio-id ID] [--timeout SECS]
//!                          [--socket PATH | --fake]
//! ```
//!
//! Steps: `guest:open` (find, unbind, init the device), `guest:hello`, `guest:ping` (N pings,
//! timing printed), `guest:solve`, `guest:allocate-nv12-window` (NV12 1920x1080, host
//! window), `guest:pattern` (write and read back through the window mapping), `guest:free`.
//! A failed step makes the later ones fail too. Exit status 0 only if all passed. `--socket`
//! and `--fake` run the same steps over the local socket or the in-process fake broker.
//! Link it statically for an initramfs: `RUSTFLAGS="-C target-feature=+crt-static"`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bufbroker_guest::bufbroker_proto::constraint::Usage;
use bufbroker_guest::bufbroker_proto::wire::{Placement, SolveReply};
use bufbroker_guest::bufbroker_proto::{Fourcc, Request};
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::virtio_pci::{VirtioPciOptions, VirtioPciTransport};
use bufbroker_guest::{Client, ClientOptions, Transport, participants};

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

fn run<T: Transport>(report: &mut Report, transport: Option<T>, pings: u32) {
    let mut client = report.step("guest:hello", || {
        let t = transport.ok_or("no transport")?;
        let c = Client::connect(t, &ClientOptions::default()).map_err(|e| chain(&e))?;
        let s = c.session();
        println!(
            "session: version {} features {:#x} broker {:?}",
            s.version,
            s.features.bits(),
            s.broker
        );
        Ok(c)
    });
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
    let request = Request {
        width: 1920,
        height: 1080,
        formats: vec![Fourcc::from_chars(*b"NV12")],
        usage: Usage::CPU_WRITE,
        participants: vec![participants::cpu()],
        count: 1,
    };
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
        let pattern: Vec<u8> = (0..map.len()).map(|i| (i * 7 + 3) as u8).collect();
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
    report.step("guest:free", || {
        let c = client.as_mut().ok_or("no client")?;
        let a = alloc.ok_or("no allocation")?;
        for b in &a.buffers {
            c.free(b.id()).map_err(|e| chain(&e))?;
        }
        Ok(())
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
            run(&mut report, t, pings);
        }
        "socket" => {
            let t = report.step("guest:open", || {
                let path = socket.clone().unwrap_or_default();
                LocalTransport::connect(path.as_ref()).map_err(|e| chain(&e))
            });
            run(&mut report, t, pings);
        }
        _ => {
            let t = report.step("guest:open", || {
                let t = VirtioPciTransport::open(&options).map_err(|e| chain(&e))?;
                println!("device {}: config {:?}", t.bdf(), t.config());
                Ok(t)
            });
            run(&mut report, t, pings);
        }
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
