//! The parent's reader (`read_loop`) fed a worker's stream in pieces: it must
//! end, as "bye", "eof" or "broken", and never panic. The first three bytes
//! pick the tasks the worker holds, the read size and the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let tasks = data[0] % 17;
    let chunk = 1 + usize::from(data[1]);
    let max_frame = if data[2] % 2 == 0 { 64 } else { 64 * 1024 * 1024 };
    looppool::__fuzz::parent_reader(&data[3..], tasks, chunk, max_frame);
});
