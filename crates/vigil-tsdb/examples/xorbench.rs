//! Decoding speed of XOR chunks (120 samples, 2-decimal gauge, jittered 10 s timestamps).
use std::time::Instant;
use vigil_tsdb::chunk::{XorAppender, decode_xor};
fn main() {
    let mut chunks = Vec::new();
    for s in 0..10_000u64 {
        let mut a = XorAppender::new();
        let mut v = (s % 100) as f64;
        for i in 0..120i64 {
            v += ((i * 7 + s as i64) % 13) as f64 * 0.01;
            a.append(
                1_700_000_000_000 + i * 10_000 + (i * 3 % 5),
                (v * 100.0).round() / 100.0,
            );
        }
        chunks.push(a.bytes().to_vec());
    }
    let mut out = Vec::with_capacity(200);
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..5 {
        for c in &chunks {
            out.clear();
            decode_xor(c, &mut out).unwrap();
            n += out.len();
        }
    }
    let el = t.elapsed();
    println!(
        "{n} samples in {el:?}: {:.1} ns/sample",
        el.as_nanos() as f64 / n as f64
    );
}
