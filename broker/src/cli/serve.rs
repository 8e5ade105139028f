//! `bufbroker serve`: the vhost-user device for guests.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use crate::args::ServeArgs;
use crate::config::Config;
use crate::heap::error_chain;
use crate::local::LocalServer;
use crate::session::{Broker, guest_factory};
use crate::vhost::{DeviceConfig, StopSignal, serve_socket};

/// The vhost-user backend capabilities (QEMU's `docs/interop/vhost-user.json` convention:
/// `{"type": ..., "features": [...]}`). The device type is not one QEMU's schema lists yet;
/// "dmabuf" follows the name of virtio device id 37.
pub const CAPABILITIES: &str = r#"{"type": "dmabuf", "features": []}"#;

/// Runs `bufbroker serve`.
pub fn run(args: &ServeArgs) -> ExitCode {
    if args.print_capabilities {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    let sockets = match listeners(args) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = DeviceConfig {
        shmem_size: args.shmem_size,
        ..DeviceConfig::default()
    };
    let broker = match broker(args) {
        Ok(b) => b,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.local_socket {
        match LocalServer::bind(path, broker.clone()) {
            Ok(server) => {
                log::info!("{}: serving host processes", server.path().display());
                std::thread::spawn(move || {
                    if let Err(e) = server.serve() {
                        log::error!("local socket: {}", error_chain(&e));
                    }
                });
            }
            Err(e) => {
                log::error!("{}", error_chain(&e));
                return ExitCode::FAILURE;
            }
        }
    }
    let factory = guest_factory(broker);
    let stop = match StopSignal::new() {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = std::thread::scope(|scope| {
        let threads: Vec<_> = sockets
            .iter()
            .map(|(name, listener)| {
                let (config, factory, stop) = (&config, factory.as_ref(), &stop);
                log::info!("{name}: listening (window {} bytes)", config.shmem_size);
                scope.spawn(move || serve_socket(listener, name, config, factory, stop))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t.join() {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    log::error!("{}", bufbroker_proto::wire::error_chain(&e));
                    stop.stop();
                    true
                }
                Err(_) => {
                    log::error!("a socket thread panicked");
                    stop.stop();
                    true
                }
            })
            .fold(false, |a, b| a | b)
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The broker: configuration loaded, heaps discovered.
fn broker(args: &ServeArgs) -> Result<Arc<Broker>, String> {
    let config = Config::load_with_vfio(args.config.as_deref(), &args.vfio_devices)
        .map_err(|e| error_chain(&e))?;
    let broker = Broker::from_config(config).map_err(|e| error_chain(&e))?;
    let heaps: Vec<&str> = broker
        .heap_infos()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    log::info!("heaps: {heaps:?}");
    Ok(Arc::new(broker))
}

/// The listening sockets with their names.
fn listeners(args: &ServeArgs) -> Result<Vec<(String, UnixListener)>, String> {
    if let Some(fd) = args.fd {
        return Ok(vec![(format!("fd {fd}"), inherited_listener(fd)?)]);
    }
    let Some(path) = &args.socket_path else {
        return Err("no --socket-path or --fd".into());
    };
    if args.socket_count == 1 {
        return Ok(vec![(path.display().to_string(), bind(path)?)]);
    }
    (0..args.socket_count)
        .map(|i| {
            let mut p = path.clone().into_os_string();
            p.push(i.to_string());
            let p = PathBuf::from(p);
            Ok((p.display().to_string(), bind(&p)?))
        })
        .collect()
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("{}: replaced a stale socket file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// The listening socket inherited as `fd`.
fn inherited_listener(fd: i32) -> Result<UnixListener, String> {
    if fd < 3 {
        return Err(format!("--fd {fd} names a standard stream, not a socket"));
    }
    // SAFETY: the borrow lives only for this fstat; a descriptor that is not open makes
    // fstat fail with EBADF, which is reported.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed).map_err(|e| format!("--fd {fd}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(format!("--fd {fd} is not a socket"));
    }
    // SAFETY: `--fd N` means the parent handed this process the open socket N to own, and
    // nothing else in the process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixListener::from(owned))
}
