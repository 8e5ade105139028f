//! Client library for bufbroker.
//!
//! Not written yet: see `README.md` for what this crate will hold.
