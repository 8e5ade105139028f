//! VFIO devices as bufbroker participants.
//!
//! Not written yet: see `README.md` for what this crate will hold.
