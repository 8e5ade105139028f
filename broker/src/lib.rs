//! The bufbroker host daemon: heaps, the buffer registry, sessions, the vhost-user device, the
//! local socket for host processes, and the command line.
//!
//! The data path of one request reads top to bottom through the modules: a transport
//! ([`local`], or the vhost-user device) decodes a message → [`session`] checks negotiation,
//! policy and quotas → the solver (`bufbroker_proto::solve_with`, through the session's plan
//! cache) → a [`heap`] allocates → the [`registry`] records it → the transport exposes it
//! ([`exposure`], or fds over the local socket; IOVA mappings for host [`vfio`] devices).

pub mod args;
pub mod cli;
pub mod config;
pub mod constraints_file;
pub mod exposure;
pub mod heap;
pub mod local;
pub mod registry;
pub mod session;
pub mod vfio;
pub mod vhost;
