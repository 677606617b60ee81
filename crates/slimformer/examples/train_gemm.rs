//! The three products of a linear layer's training step (Y = X·Wᵀ, dX = dY·W,
//! dW = dYᵀ·X) through candle's matmul against the packed kernels with the packing
//! each call needs: `cargo run --release -p slimformer --example train_gemm [THREADS]`.
use candle_core::{Device, Tensor};
use slimformer_kernels::gemm::{self, Epilogue, PackedWeight};
use slimformer_kernels::gemm_bf16::{self, Lhs, PackedBf16Weight};
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time(runs: usize, f: &mut dyn FnMut()) -> f64 {
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
    let dev = Device::Cpu;
    println!(
        "rows out in | candle fwd dX dW ms | f32 fwd ms | bf16 fwd dX dW ms | bf16 dW's parts: pack X, pack dY (unused), product"
    );
    for &(m, n, k) in &[
        (1760, 384, 384),
        (1760, 1536, 384),
        (1760, 384, 1536),
        (4096, 1536, 384),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
        let (xv, wv, dyv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            dy.flatten_all()?.to_vec1::<f32>()?,
        );
        let runs = 30;
        let c = [
            time(runs, &mut || {
                std::hint::black_box(x.matmul(&w.t().unwrap()).unwrap());
            }),
            time(runs, &mut || {
                std::hint::black_box(dy.matmul(&w).unwrap());
            }),
            time(runs, &mut || {
                std::hint::black_box(dy.t().unwrap().matmul(&x).unwrap());
            }),
        ];
        // The f32 forward as training runs it (its gradients are candle's products).
        let f = time(runs, &mut || {
            let p = PackedWeight::pack(&wv, n, k);
            std::hint::black_box(gemm::linear(&xv, m, &p, None, Epilogue::None));
        });
        let b = [
            time(runs, &mut || {
                let p = PackedBf16Weight::pack(&wv, n, k);
                std::hint::black_box(gemm_bf16::linear(&xv, m, &p, None, Epilogue::None));
            }),
            time(runs, &mut || {
                let p = PackedBf16Weight::pack_transposed(&wv, k, n);
                std::hint::black_box(gemm_bf16::linear(&dyv, m, &p, None, Epilogue::None));
            }),
            time(runs, &mut || {
                let p = PackedBf16Weight::pack_transposed(&xv, k, m);
                std::hint::black_box(gemm_bf16::product(
                    Lhs::Columns(&dyv),
                    n,
                    &p,
                    None,
                    Epilogue::None,
                ));
            }),
        ];
        let px = PackedBf16Weight::pack_transposed(&xv, k, m);
        let parts = [
            time(runs, &mut || {
                std::hint::black_box(PackedBf16Weight::pack_transposed(&xv, k, m));
            }),
            time(runs, &mut || {
                std::hint::black_box(PackedBf16Weight::pack_transposed(&dyv, n, m));
            }),
            time(runs, &mut || {
                std::hint::black_box(gemm_bf16::product(
                    Lhs::Columns(&dyv),
                    n,
                    &px,
                    None,
                    Epilogue::None,
                ));
            }),
        ];
        let ms = |v: [f64; 3]| format!("{:.2} {:.2} {:.2}", v[0] * 1e3, v[1] * 1e3, v[2] * 1e3);
        println!(
            "{m} {n} {k} | {} | {:.2} | {} | {}",
            ms(c),
            f * 1e3,
            ms(b),
            ms(parts)
        );
    }
    Ok(())
}
