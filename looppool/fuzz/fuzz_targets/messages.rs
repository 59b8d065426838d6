//! One frame body decoded as a worker → parent and a parent → worker
//! message, payloads included.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    looppool::__fuzz::from_worker(body);
    looppool::__fuzz::to_worker(body);
});
