//! Test support for bufbroker: the in-process VMM harness and the QEMU end-to-end runner.
//!
//! Not written yet: see `README.md` for what this crate will hold.
