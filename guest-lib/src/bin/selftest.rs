//! Guest self-test (to come).
fn main() {}
