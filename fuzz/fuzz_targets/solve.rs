//! Arbitrary bytes → a postcard `Request` → the solver with a small budget; every plan must
//! pass the independent checker.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bufbroker_proto::fuzzing::solve(data);
});
