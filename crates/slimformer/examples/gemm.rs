//! GFLOP/s of the packed linear kernels (f32, int8 and bf16) against candle's matmul on MiniLM's shapes:
//! `cargo run --release -p slimformer --example gemm [THREADS]`.
use slimformer_kernels::gemm::{self, Epilogue, PackedWeight};
use slimformer_kernels::gemm_bf16::{self, PackedBf16Weight};
use slimformer_kernels::gemm_int8::{self, PackedInt8Weight};
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// GFLOP/s of twelve independent chains of 16-lane FMAs (more than the units'
/// latency × width), `steps` deep.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_peak(steps: usize) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 12];
    let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let start = Instant::now();
    for _ in 0..steps {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&acc);
    (steps * 12 * 32) as f64 / seconds / 1e9
}

fn main() -> candle_core::Result<()> {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    // The ceilings: the FMA units alone, then our kernel with everything in L1.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        let peak = unsafe { fma_peak(200_000_000) };
        println!("AVX-512 FMA peak, one thread: {peak:.1} GFLOP/s");
    }
    println!(
        "f32 kernel with A, W and C in L1, one thread: {:.1} GFLOP/s",
        gemm::kernel_rate_in_l1(2_000_000)
    );
    let dev = candle_core::Device::Cpu;
    for &(m, n, k) in &[
        (4096, 384, 384),
        (4096, 1536, 384),
        (4096, 384, 1536),
        (128, 384, 384),
        (128, 1152, 384),
        (128, 1536, 384),
        (128, 384, 1536),
        (16, 384, 384),
    ] {
        let a = candle_core::Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let av = a.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let packed = PackedWeight::pack(&wv, n, k);
        let packed_int8 = PackedInt8Weight::pack(&wv, n, k);
        let packed_bf16 = PackedBf16Weight::pack(&wv, n, k);
        let flops = 2.0 * (m * n * k) as f64;
        let runs = (2e10 / flops).clamp(5.0, 200.0) as usize;
        let time = |f: &mut dyn FnMut()| {
            f();
            median(
                (0..runs)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let ours = time(&mut || {
            std::hint::black_box(gemm::linear(&av, m, &packed, None, Epilogue::None));
        });
        let int8 = time(&mut || {
            std::hint::black_box(gemm_int8::linear(
                &av,
                m,
                &packed_int8,
                None,
                Epilogue::None,
            ));
        });
        let bf16 = time(&mut || {
            std::hint::black_box(gemm_bf16::linear(
                &av,
                m,
                &packed_bf16,
                None,
                Epilogue::None,
            ));
        });
        // The model reads each layer's weights once per pass, from L3 or memory, not
        // from L2 as the loop above does: the same product over copies of W that
        // together outgrow L2 (48 MB, about MiniLM's linear weights).
        let copies = (48 << 20) / (4 * n * k);
        let cold_weights: Vec<PackedWeight> = (0..copies.max(2))
            .map(|_| PackedWeight::pack(&wv, n, k))
            .collect();
        let mut next = 0;
        let cold = time(&mut || {
            next = (next + 1) % cold_weights.len();
            std::hint::black_box(gemm::linear(
                &av,
                m,
                &cold_weights[next],
                None,
                Epilogue::None,
            ));
        });
        let wt = w.t()?;
        let theirs = time(&mut || {
            std::hint::black_box(a.matmul(&wt).unwrap());
        });
        println!(
            "{m}x{n}x{k}: packed {:.1} GFLOP/s ({:.2} ms), cold W {:.1} GFLOP/s, int8 {:.1} GOP/s ({:.2} ms), bf16 {:.1} GFLOP/s ({:.2} ms), candle {:.1} GFLOP/s ({:.2} ms)",
            flops / ours / 1e9,
            ours * 1e3,
            flops / cold / 1e9,
            flops / int8 / 1e9,
            int8 * 1e3,
            flops / bf16 / 1e9,
            bf16 * 1e3,
            flops / theirs / 1e9,
            theirs * 1e3
        );
    }
    Ok(())
}
