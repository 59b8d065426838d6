//! A program that a pool starts as a worker but that gets the handshake
//! wrong, in the way its first argument names:
//!
//! - `wrong-magic`: a hello frame without the looppool magic bytes;
//! - `wrong-version`: a well-formed hello for protocol version 99;
//! - `garbage`: a line of text on the connection, as a program that is not
//!   a looppool worker might write;
//! - `silent`: says nothing and waits;
//! - `exit`: exits at once.

use std::io::Write;

const HELLO: u8 = 0x81;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A hello body after the magic: the protocol version, then the postcard
/// encoding of `Hello { fingerprint, worker, pid }`.
fn hello_fields(protocol: u64, worker: &str) -> Vec<u8> {
    let mut b = Vec::new();
    varint(&mut b, protocol);
    varint(&mut b, 0x1234_5678);
    varint(&mut b, worker.len() as u64);
    b.extend_from_slice(worker.as_bytes());
    varint(&mut b, std::process::id().into());
    b
}

fn main() {
    let worker = std::env::var("LOOPPOOL_WORKER").unwrap_or_default();
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut conn = looppool_tests::sys::connection();
    let bytes = match mode.as_str() {
        "wrong-magic" => {
            let mut body = vec![HELLO];
            body.extend_from_slice(b"LPWX");
            body.extend(hello_fields(1, &worker));
            frame(&body)
        }
        "wrong-version" => {
            let mut body = vec![HELLO];
            body.extend_from_slice(b"LPWK");
            body.extend(hello_fields(99, &worker));
            frame(&body)
        }
        "garbage" => b"usage: bad-handshake [options] FILE...\n".to_vec(),
        "silent" => {
            std::thread::sleep(std::time::Duration::from_secs(120));
            return;
        }
        "exit" => return,
        other => panic!("unknown mode {other:?}"),
    };
    conn.write_all(&bytes).unwrap();
    // Wait for the pool to give up on us (it closes the connection).
    let _ = std::io::Read::read(&mut conn, &mut [0u8; 64]);
}
