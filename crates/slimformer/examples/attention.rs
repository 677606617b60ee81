//! Time of the fused attention alone on MiniLM's shapes (12 heads of 32), per layer,
//! in f32 and in bf16 (AMX, where present):
//! `cargo run --release -p slimformer --example attention [THREADS]`.
use candle_core::{Device, Tensor};
use slimformer::layers::fused::Attention;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let (heads, d) = (12, 32);
    for &(b, l) in &[(1, 16), (1, 128), (32, 128)] {
        let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * heads * d), &Device::Cpu)?;
        let op = |bf16| Attention {
            bias: vec![0.0; b * l],
            heads,
            scale: (d as f32).powf(-0.5),
            bf16,
        };
        let runs = (20_000 / (b * l)).clamp(20, 2000);
        // Alternating the two, so a slow phase of the machine hits both.
        let mut times = [Vec::new(), Vec::new()];
        for run in 0..2 * (runs + 3) {
            let bf16 = run % 2 == 1;
            let t = Instant::now();
            std::hint::black_box(qkv.apply_op1_no_bwd(&op(bf16)).unwrap());
            if run >= 6 {
                times[bf16 as usize].push(t.elapsed().as_secs_f64());
            }
        }
        // q·kᵀ and p·v: 2 · 2·l·l·d flops per head.
        let flops = (b * heads * 4 * l * l * d) as f64;
        let [f32_ms, bf16_ms] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2] * 1e3
        });
        println!(
            "{b}x{l}: f32 {f32_ms:.3} ms, {:.1} GFLOP/s; bf16 {bf16_ms:.3} ms, {:.1} GFLOP/s",
            flops / f32_ms / 1e6,
            flops / bf16_ms / 1e6
        );
    }
    Ok(())
}
