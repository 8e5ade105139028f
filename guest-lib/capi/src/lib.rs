//! C API (to come).
