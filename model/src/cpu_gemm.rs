//! A CPU fast path for [`crate::layers::Linear`] on the ndarray backend: an AVX-512
//! single-precision GEMM `C = A · B (+ bias)` that reads the weight `B` (`[in, out]`,
//! row-major, as Engram stores it) in place, so nothing is repacked per call for
//! small batches and nothing is cached beside the weights.
//!
//! Blocking follows Goto & van de Geijn, "Anatomy of high-performance matrix
//! multiplication" (2008): `NC`-column and `KC`-deep blocks of `B` are copied into
//! `NR`-wide panels once and reused by every `MR`-row tile of `A`; a 12 × 32 register
//! tile (24 zmm accumulators) does the arithmetic. Columns (or rows, when there are
//! few columns) are split over rayon's threads.
//!
//! Where AVX-512 is absent, or the tensors are not f32 ndarray tensors (autodiff,
//! CUDA), [`linear`] returns `None` and burn's matmul runs instead.
#![allow(unsafe_code)]

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};

use burn_ndarray::NdArrayTensor;
use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorPrimitive};

/// Rows of `A` per register tile.
const MR: usize = 12;
/// Columns of `B` per register tile: two zmm registers.
const NR: usize = 32;
/// Depth of one block of `B` (`KC × NR` floats = 32 KiB, an L1's worth).
const KC: usize = 256;
/// Width of one packed block of `B` (`KC × NC` floats = 512 KiB, in L2).
const NC: usize = 512;
/// Pack `B` only when at least this many rows of `A` reuse each packed block.
const PACK_MIN_ROWS: usize = 2 * MR;
/// Below this many multiply-adds one thread is faster than a fork.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// 0: undecided, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether the fast path is on: the CPU has AVX-512F and `ENGRAM_CPU_GEMM` is not `burn`.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = supported() && std::env::var("ENGRAM_CPU_GEMM").as_deref() != Ok("burn");
            STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turn the fast path on or off for this process (benchmarks compare both);
/// it stays off where the CPU lacks AVX-512F.
pub fn set_enabled(on: bool) {
    STATE.store(if on && supported() { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x · W (+ b)` through the fast path, or `None` where it does not apply.
///
/// # Shapes
/// - x: `[batch, pos, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]` → `[batch, pos, d_out]`
pub fn linear<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    if !enabled() {
        return None;
    }
    let [b, s, k] = x.dims();
    let [k2, n] = weight.dims();
    if k != k2 || b * s == 0 || n == 0 || k == 0 {
        return None;
    }
    let xp = float_primitive(x.clone())?;
    let wp = float_primitive(weight.clone())?;
    let bp = match bias {
        Some(t) => Some(float_primitive(t.clone())?),
        None => None,
    };
    let xv = f32_view(&xp)?;
    let wv = f32_view(&wp)?;
    let (xa, wa) = (xv.as_standard_layout(), wv.as_standard_layout());
    let (a, w) = (xa.as_slice()?, wa.as_slice()?);
    let bias_view = match &bp {
        Some(p) => Some(f32_view(p)?),
        None => None,
    };
    let bias_std = bias_view.as_ref().map(|v| v.as_standard_layout());
    let bias_slice = match &bias_std {
        Some(v) => Some(v.as_slice()?),
        None => None,
    };
    if bias_slice.is_some_and(|s| s.len() != n) {
        return None;
    }
    let m = b * s;
    let mut c = vec![0f32; m * n];
    if !sgemm(m, n, k, a, w, bias_slice, &mut c) {
        return None;
    }
    let out = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&[b, s, n]), c).ok()?;
    let prim: Box<dyn Any> = Box::new(NdArrayTensor::from(out));
    let prim = prim.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}

fn float_primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<B::FloatTensorPrimitive> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => Some(p),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// The f32 data of an ndarray tensor primitive, viewed in place.
fn f32_view<P: 'static>(p: &P) -> Option<ndarray::ArrayViewD<'_, f32>> {
    match (p as &dyn Any).downcast_ref::<NdArrayTensor>()? {
        NdArrayTensor::F32(s) => Some(s.view()),
        _ => None,
    }
}

/// `c = a · b (+ bias)`, all row-major: `a: [m, k]`, `b: [k, n]`, `c: [m, n]`.
/// Returns false (leaving `c` alone) where the CPU lacks AVX-512F or a length is wrong.
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    if !supported()
        || a.len() != m * k
        || b.len() != k * n
        || c.len() != m * n
        || bias.is_some_and(|v| v.len() != n)
    {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let job = Job {
            n,
            k,
            a: a.as_ptr(),
            b: b.as_ptr(),
            bias: bias.map(<[f32]>::as_ptr),
            c: c.as_mut_ptr(),
        };
        let threads = rayon::current_num_threads().max(1);
        let panels = n.div_ceil(NR);
        if threads == 1 || m * n * k < PARALLEL_MIN_WORK {
            job.run(0..m, 0..n);
        } else if panels >= threads {
            // Contiguous runs of whole panels, one per thread.
            use rayon::prelude::*;
            (0..threads).into_par_iter().for_each(|t| {
                let (p0, p1) = (panels * t / threads, panels * (t + 1) / threads);
                job.run(0..m, (p0 * NR).min(n)..(p1 * NR).min(n));
            });
        } else {
            use rayon::prelude::*;
            let tiles = m.div_ceil(MR);
            (0..threads).into_par_iter().for_each(|t| {
                let (t0, t1) = (tiles * t / threads, tiles * (t + 1) / threads);
                job.run((t0 * MR).min(m)..(t1 * MR).min(m), 0..n);
            });
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, b, bias, c);
        false
    }
}

/// One GEMM's operands as raw pointers, shared by threads that write disjoint parts of `c`.
#[cfg(target_arch = "x86_64")]
struct Job {
    n: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    bias: Option<*const f32>,
    c: *mut f32,
}

// SAFETY: threads read `a`, `b`, `bias` and write disjoint row or column ranges of `c`,
// all of which outlive the parallel section in `sgemm`.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Job {}

#[cfg(target_arch = "x86_64")]
impl Job {
    /// Compute `c[rows, cols]`.
    fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        let pack = rows.len() >= PACK_MIN_ROWS;
        let mut buf = if pack {
            vec![0f32; KC * NC.min(cols.len().div_ceil(NR) * NR)]
        } else {
            Vec::new()
        };
        // SAFETY: `supported()` was checked in `sgemm`; ranges lie inside the matrices.
        unsafe { self.run_avx512(rows, cols, &mut buf, pack) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        buf: &mut [f32],
        pack: bool,
    ) {
        let (n, k) = (self.n, self.k);
        let mut jc = cols.start;
        while jc < cols.end {
            let nc = NC.min(cols.end - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                if pack {
                    // Panel `p` holds B[pc.., jc + p*NR ..] as `kc` rows of NR floats, zero-padded.
                    for (p, j0) in (0..nc).step_by(NR).enumerate() {
                        let w = NR.min(nc - j0);
                        let panel = &mut buf[p * kc * NR..(p + 1) * kc * NR];
                        for r in 0..kc {
                            let src = self.b.add((pc + r) * n + jc + j0);
                            let dst = &mut panel[r * NR..(r + 1) * NR];
                            std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), w);
                            dst[w..].fill(0.0);
                        }
                    }
                }
                let mut ir = rows.start;
                while ir < rows.end {
                    let mr = MR.min(rows.end - ir);
                    let mut jr = 0;
                    while jr < nc {
                        let nr = NR.min(nc - jr);
                        let (bp, ldb) = if pack {
                            (buf.as_ptr().add((jr / NR) * kc * NR), NR)
                        } else {
                            (self.b.add(pc * n + jc + jr), n)
                        };
                        let tile = Tile {
                            kc,
                            a: self.a.add(ir * k + pc),
                            lda: k,
                            b: bp,
                            ldb,
                            c: self.c.add(ir * n + jc + jr),
                            ldc: n,
                            nr,
                            init: if pc == 0 {
                                Some(self.bias.map(|p| p.add(jc + jr)))
                            } else {
                                None
                            },
                        };
                        tile.dispatch(mr);
                        jr += NR;
                    }
                    ir += MR;
                }
                pc += KC;
            }
            jc += NC;
        }
    }
}

/// One register tile: `c[0..R, 0..nr] (+)= a[0..R, 0..kc] · b[0..kc, 0..nr]`.
#[cfg(target_arch = "x86_64")]
struct Tile {
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    /// `Some(bias)`: overwrite `c` with the product (+ bias); `None`: add to `c`.
    init: Option<Option<*const f32>>,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    #[target_feature(enable = "avx512f")]
    unsafe fn dispatch(&self, rows: usize) {
        match rows {
            12 => self.kernel::<12>(),
            11 => self.kernel::<11>(),
            10 => self.kernel::<10>(),
            9 => self.kernel::<9>(),
            8 => self.kernel::<8>(),
            7 => self.kernel::<7>(),
            6 => self.kernel::<6>(),
            5 => self.kernel::<5>(),
            4 => self.kernel::<4>(),
            3 => self.kernel::<3>(),
            2 => self.kernel::<2>(),
            _ => self.kernel::<1>(),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize>(&self) {
        use std::arch::x86_64::*;
        let nr = self.nr;
        let m0: __mmask16 = if nr >= 16 { 0xFFFF } else { (1u16 << nr) - 1 };
        let m1: __mmask16 = if nr >= NR {
            0xFFFF
        } else if nr > 16 {
            (1u16 << (nr - 16)) - 1
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..self.kc {
            let row = self.b.add(p * self.ldb);
            let b0 = _mm512_maskz_loadu_ps(m0, row);
            // Masked-off lanes are never read, so the tail may point past the end.
            let b1 = _mm512_maskz_loadu_ps(m1, row.wrapping_add(16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*self.a.add(i * self.lda + p));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        let masks = [m0, m1];
        for (i, acc) in acc.iter().enumerate() {
            for h in 0..2 {
                let ptr = self.c.add(i * self.ldc).wrapping_add(16 * h);
                let base = match self.init {
                    Some(Some(bias)) => _mm512_maskz_loadu_ps(masks[h], bias.wrapping_add(16 * h)),
                    Some(None) => _mm512_setzero_ps(),
                    None => _mm512_maskz_loadu_ps(masks[h], ptr),
                };
                _mm512_mask_storeu_ps(ptr, masks[h], _mm512_add_ps(base, acc[h]));
            }
        }
    }
}
