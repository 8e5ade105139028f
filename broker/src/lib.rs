//! The bufbroker host daemon: heaps, the buffer registry, sessions, the vhost-user device, the
//! local socket for host processes, and the command line.

pub mod args;
pub mod cli;
pub mod constraints_file;
pub mod exposure;
pub mod heap;
pub mod vhost;
