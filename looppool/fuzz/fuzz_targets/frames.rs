//! A byte stream split into frames and every frame decoded as a message of
//! either direction. The first byte picks the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max_frame = match pick % 3 {
        0 => 16,
        1 => 1024,
        _ => 64 * 1024 * 1024,
    };
    looppool::__fuzz::frames(stream, max_frame);
});
