//! NV12 example (to come).
fn main() {}
