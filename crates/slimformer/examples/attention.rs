//! Time of the fused attention alone on MiniLM's shapes (12 heads of 32), per layer:
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
        let op = || Attention {
            bias: vec![0.0; b * l],
            heads,
            scale: (d as f32).powf(-0.5),
        };
        let runs = (20_000 / (b * l)).clamp(20, 2000);
        let mut times: Vec<f64> = (0..runs + 3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(qkv.apply_op1_no_bwd(&op()).unwrap());
                t.elapsed().as_secs_f64()
            })
            .skip(3)
            .collect();
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2] * 1e3;
        // q·kᵀ and p·v: 2 · 2·l·l·d flops per head.
        let flops = (b * heads * 4 * l * l * d) as f64;
        println!("{b}x{l}: {ms:.3} ms, {:.1} GFLOP/s", flops / ms / 1e6);
    }
    Ok(())
}
