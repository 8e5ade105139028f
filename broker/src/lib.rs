//! The bufbroker host daemon as a library: heaps, and (to come) the buffer registry, sessions,
//! the vhost-user device and the local socket.

pub mod heap;
