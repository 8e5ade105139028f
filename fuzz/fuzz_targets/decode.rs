//! Arbitrary bytes → `wire::decode`; decoded messages must re-encode and round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bufbroker_proto::fuzzing::decode(data);
});
