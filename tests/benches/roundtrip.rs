//! Round-trip benchmark (written with the harness).

fn main() {}
