//! Single-precision GEMM `C = A · B (+ bias)` with AVX-512 or AVX2/FMA: the kernel under
//! [`crate::layers::Linear`] and the attention products on the CPU backend. It reads
//! the weight `B` (`[in, out]`, row-major, as Engram stores it) in place, so nothing
//! is repacked per call for small batches and nothing is cached beside the weights.
//!
//! Blocking follows Goto & van de Geijn, "Anatomy of high-performance matrix
//! multiplication" (2008): `NC`-column and `KC`-deep blocks of `B` are copied into
//! `NR`-wide panels once and reused by every `MR`-row tile of `A`; a 12 × 32 register
//! tile (24 zmm accumulators) does the arithmetic, or with AVX2 four 6 × 16 tiles
//! (12 ymm accumulators each, the shape of BLIS's Haswell kernel). Columns (or rows,
//! when there are few columns) are split over rayon's threads.
#![allow(unsafe_code)]

use super::{gemm_isa, Isa};

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

/// `c = a · b (+ bias)`, all row-major: `a: [m, k]`, `b: [k, n]`, `c: [m, n]`.
/// Returns false (leaving `c` alone) where the CPU has neither AVX2/FMA nor AVX-512F,
/// or a length is wrong.
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    gemm(m, n, k, a, b, false, bias, c)
}

/// `c = a · btᵀ`, all row-major: `a: [m, k]`, `bt: [n, k]`, `c: [m, n]`. The input
/// gradient of a linear map (`∂x = ∂y · Wᵀ` with `W: [in, out]`) and `kᵀk` sums are
/// this product. Returns false (leaving `c` alone) where `sgemm` would.
pub fn sgemm_bt(m: usize, n: usize, k: usize, a: &[f32], bt: &[f32], c: &mut [f32]) -> bool {
    gemm(m, n, k, a, bt, true, None, c)
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    b_trans: bool,
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    let Some(isa) = gemm_isa() else {
        return false;
    };
    if a.len() != m * k
        || b.len() != k * n
        || c.len() != m * n
        || bias.is_some_and(|v| v.len() != n)
    {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        for row in c.chunks_exact_mut(n) {
            match bias {
                Some(v) => row.copy_from_slice(v),
                None => row.fill(0.0),
            }
        }
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::amx::worth(m, n, k) {
            // SAFETY: AMX is on (`worth`) and the lengths were checked above.
            unsafe {
                super::amx::gemm(
                    (m, n, k),
                    a.as_ptr(),
                    k,
                    b.as_ptr(),
                    if b_trans { k } else { n },
                    b_trans,
                    bias.map(<[f32]>::as_ptr),
                    c.as_mut_ptr(),
                    n,
                );
            }
            return true;
        }
        let job = Job {
            isa,
            k,
            lda: k,
            ldb: if b_trans { k } else { n },
            ldc: n,
            a: a.as_ptr(),
            b: b.as_ptr(),
            b_trans,
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
        let _ = (a, b, b_trans, bias, c, isa);
        false
    }
}

/// `c = a · b` on one thread, with row strides: `a[i * lda + p]`, `b[p * ldb + j]`,
/// `c[i * ldc + j]` for `i < m`, `j < n`, `p < k`. For products inside an already
/// parallel loop (one attention head per task).
///
/// # Safety
/// The CPU has `isa`, and every index above lies inside its slice.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_strided(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    let job = Job {
        isa,
        k,
        lda,
        ldb,
        ldc,
        a,
        b,
        b_trans: false,
        bias: None,
        c,
    };
    job.run(0..m, 0..n);
}

/// One GEMM's operands as raw pointers, shared by threads that write disjoint parts of `c`.
#[cfg(target_arch = "x86_64")]
struct Job {
    /// The CPU has it (checked where the job was made).
    isa: Isa,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    a: *const f32,
    /// `b[p * ldb + j]`, or `b[j * ldb + p]` when `b_trans` (then always packed).
    b: *const f32,
    b_trans: bool,
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
        let pack = self.b_trans || rows.len() >= PACK_MIN_ROWS;
        let mut buf = if pack {
            vec![0f32; KC * NC.min(cols.len().div_ceil(NR) * NR)]
        } else {
            Vec::new()
        };
        // SAFETY: the CPU has `isa` (see the field); ranges lie inside the matrices.
        unsafe {
            match self.isa {
                Isa::Avx512 => self.run_avx512(rows, cols, &mut buf, pack),
                Isa::Avx2 => self.run_avx2(rows, cols, &mut buf, pack),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        buf: &mut [f32],
        pack: bool,
    ) {
        self.blocked(rows, cols, buf, pack);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        buf: &mut [f32],
        pack: bool,
    ) {
        self.blocked(rows, cols, buf, pack);
    }

    /// The blocking loops, inlined into each instruction set's entry.
    #[inline(always)]
    unsafe fn blocked(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        buf: &mut [f32],
        pack: bool,
    ) {
        let k = self.k;
        let mut jc = cols.start;
        while jc < cols.end {
            let nc = NC.min(cols.end - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                if self.b_trans {
                    // Panel `p` holds Bᵀ's rows jc + p*NR .. as columns: each source
                    // row is read front to back and scattered down one column.
                    for (p, j0) in (0..nc).step_by(NR).enumerate() {
                        let w = NR.min(nc - j0);
                        let panel = &mut buf[p * kc * NR..(p + 1) * kc * NR];
                        if w < NR {
                            panel.fill(0.0);
                        }
                        for j in 0..w {
                            let src = self.b.add((jc + j0 + j) * self.ldb + pc);
                            for r in 0..kc {
                                *panel.get_unchecked_mut(r * NR + j) = *src.add(r);
                            }
                        }
                    }
                } else if pack {
                    // Panel `p` holds B[pc.., jc + p*NR ..] as `kc` rows of NR floats,
                    // zero-padded; each source row segment is read front to back.
                    for r in 0..kc {
                        let src = self.b.add((pc + r) * self.ldb + jc);
                        for (p, j0) in (0..nc).step_by(NR).enumerate() {
                            let w = NR.min(nc - j0);
                            let dst = &mut buf[(p * kc + r) * NR..(p * kc + r + 1) * NR];
                            std::ptr::copy_nonoverlapping(src.add(j0), dst.as_mut_ptr(), w);
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
                            (self.b.add(pc * self.ldb + jc + jr), self.ldb)
                        };
                        let tile = Tile {
                            kc,
                            a: self.a.add(ir * self.lda + pc),
                            lda: self.lda,
                            b: bp,
                            ldb,
                            c: self.c.add(ir * self.ldc + jc + jr),
                            ldc: self.ldc,
                            nr,
                            init: if pc == 0 {
                                Some(self.bias.map(|p| p.add(jc + jr)))
                            } else {
                                None
                            },
                        };
                        match self.isa {
                            Isa::Avx512 => tile.dispatch(mr),
                            Isa::Avx2 => tile.dispatch_avx2(mr),
                        }
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

/// The AVX2 kernels: each 12 × 32 tile as up to four 6 × 16 tiles over the same
/// panel (6 rows × 2 ymm = 12 accumulators, with two loads of B and six broadcasts
/// of A per step of depth).
#[cfg(target_arch = "x86_64")]
impl Tile {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dispatch_avx2(&self, rows: usize) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(6);
            for c0 in [0, 16] {
                if c0 >= self.nr {
                    break;
                }
                let w = (self.nr - c0).min(16);
                if w == 16 {
                    self.rows_avx2::<true>(r, r0, c0, w);
                } else {
                    self.rows_avx2::<false>(r, r0, c0, w);
                }
            }
            r0 += 6;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2<const FULL: bool>(&self, r: usize, r0: usize, c0: usize, w: usize) {
        match r {
            6 => self.kernel_avx2::<6, FULL>(r0, c0, w),
            5 => self.kernel_avx2::<5, FULL>(r0, c0, w),
            4 => self.kernel_avx2::<4, FULL>(r0, c0, w),
            3 => self.kernel_avx2::<3, FULL>(r0, c0, w),
            2 => self.kernel_avx2::<2, FULL>(r0, c0, w),
            _ => self.kernel_avx2::<1, FULL>(r0, c0, w),
        }
    }

    /// `c[r0.., c0..c0 + w]` over `R` rows; `FULL` when `w` is 16 (no masks).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel_avx2<const R: usize, const FULL: bool>(&self, r0: usize, c0: usize, w: usize) {
        use std::arch::x86_64::*;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [
            _mm256_cmpgt_epi32(_mm256_set1_epi32(w.min(8) as i32), lanes),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(w.saturating_sub(8) as i32), lanes),
        ];
        // Masked-off lanes are never read or written, so tails may point past the end.
        let load = |p: *const f32, h: usize| {
            if FULL {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, masks[h])
            }
        };
        let a = self.a.add(r0 * self.lda);
        let b = self.b.wrapping_add(c0);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..self.kc {
            let row = b.wrapping_add(p * self.ldb);
            let b0 = load(row, 0);
            let b1 = load(row.wrapping_add(8), 1);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(i * self.lda + p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        let c = self.c.add(r0 * self.ldc).wrapping_add(c0);
        for (i, acc) in acc.iter().enumerate() {
            for (h, &acc) in acc.iter().enumerate() {
                let ptr = c.wrapping_add(i * self.ldc + 8 * h);
                let base = match self.init {
                    Some(Some(bias)) => load(bias.wrapping_add(c0 + 8 * h), h),
                    Some(None) => _mm256_setzero_ps(),
                    None => load(ptr, h),
                };
                let y = _mm256_add_ps(base, acc);
                if FULL {
                    _mm256_storeu_ps(ptr, y);
                } else {
                    _mm256_maskstore_ps(ptr, masks[h], y);
                }
            }
        }
    }
}
