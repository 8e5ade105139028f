//! `bufbroker serve-local`: load the configuration, build the broker, serve the socket.

use std::process::ExitCode;
use std::sync::Arc;

use crate::args::ServeLocalArgs;
use crate::config::Config;
use crate::heap::error_chain;
use crate::local::LocalServer;
use crate::session::Broker;

/// Runs the server until it fails; exit status 1 on any error.
pub fn run(args: &ServeLocalArgs) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bufbroker serve-local: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeLocalArgs) -> Result<(), String> {
    let config = Config::load_with_vfio(args.config.as_deref(), &args.vfio_devices)
        .map_err(|e| error_chain(&e))?;
    let broker = Arc::new(Broker::from_config(config).map_err(|e| error_chain(&e))?);
    let names: Vec<&str> = broker
        .heap_infos()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let server = LocalServer::bind(&args.socket, broker.clone()).map_err(|e| error_chain(&e))?;
    log::info!("serving {} with heaps {names:?}", server.path().display());
    server.serve().map_err(|e| error_chain(&e))
}
