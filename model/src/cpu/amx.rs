//! f32 GEMM on AMX tiles (Intel Sapphire Rapids and later), as accurate as the
//! f32 kernel: each operand is split into three bf16 parts, x = x₀ + x₁ + x₂ with
//! x₁ = bf16(x − x₀) and x₂ = bf16(x − x₀ − x₁), and the six products xᵢyⱼ with
//! i + j ≤ 2 accumulate in f32 through `tdpbf16ps` (the "bf16x6" scheme of Henry,
//! Tang & Heinecke, "Leveraging the bfloat16 artificial intelligence datatype for
//! higher-precision computations", ARITH 2019).
//!
//! A 32 × 32 block of C stays in four tiles for the whole depth. A's parts are
//! row-major bf16 with the depth padded to 32 (a tile is 16 rows of 32 values);
//! B's parts are in the VNNI layout `tdpbf16ps` reads (rows of B paired,
//! `[k/2][n][2]`), packed per call from the weight as it is stored.
#![allow(unsafe_code)]

use std::arch::asm;
use std::sync::atomic::{AtomicU8, Ordering};

/// bf16 parts per operand.
const PARTS: usize = 3;
/// Columns of B packed and swept at once (`KC`-deep parts of 256 columns sit in L2).
const NB: usize = 256;

/// 1: on, anything else: off (the default: packed per call, this path is
/// slower than the AVX-512 kernel so far; see the module's benchmark note).
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether products of at least this many rows, columns and depth run on AMX.
pub(crate) fn worth(m: usize, n: usize, k: usize) -> bool {
    m >= 32 && n >= 64 && k >= 64 && enabled()
}

/// Whether [`set_enabled`] turned the AMX path on (the front ends do where
/// `ENGRAM_CPU_GEMM=amx`). Off by default: B is split and packed on every call,
/// and `engram bench trace` on SmolLM2 (one thread) measured 78.9 s with it
/// against 65.2 s on the AVX-512 kernel; it is kept for that comparison.
pub fn enabled() -> bool {
    STATE.load(Ordering::Relaxed) == 1
}

/// Turn the AMX path on or off for this process (benchmarks compare it with
/// the AVX-512 kernel); it stays off where [`available`] is false.
pub fn set_enabled(on: bool) {
    STATE.store(if on && available() { 1 } else { 2 }, Ordering::Relaxed);
}

/// The CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and
/// Linux grants the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`).
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static GRANTED: OnceLock<bool> = OnceLock::new();
        *GRANTED.get_or_init(|| {
            let l7 = std::arch::x86_64::__cpuid_count(7, 0);
            if l7.edx & (1 << 24) == 0 || l7.edx & (1 << 22) == 0 {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18).
            let ret: i64;
            // SAFETY: a plain system call; it only changes this process's permissions.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") 0x1023i64,
                    in("rsi") 18i64,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack)
                );
            }
            ret == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// bf16 nearest to `x` (ties to even); NaN stays NaN. Branch-free, so that
/// the packing loops vectorise.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let u = x.to_bits();
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16;
    let nan = (u & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (u >> 16) | 0x40 } else { rounded }) as u16
}

#[inline(always)]
fn widen(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// The three parts of `x`.
#[inline(always)]
fn split(x: f32) -> [u16; PARTS] {
    let h0 = bf16(x);
    let r = x - widen(h0);
    let h1 = bf16(r);
    [h0, h1, bf16(r - widen(h1))]
}

/// A's parts: `[PARTS][rows][kp]`, rows padded to 32 and depth to 32 with zeros.
struct PackedA {
    parts: Vec<u16>,
    rows: usize,
    kp: usize,
}

impl PackedA {
    /// # Safety
    /// `a[i * lda + p]` is readable for `i < m`, `p < k`.
    unsafe fn new(m: usize, k: usize, a: *const f32, lda: usize) -> Self {
        let (rows, kp) = (m.div_ceil(32) * 32, k.div_ceil(32) * 32);
        let mut parts = vec![0u16; PARTS * rows * kp];
        let (p0, rest) = parts.split_at_mut(rows * kp);
        let (p1, p2) = rest.split_at_mut(rows * kp);
        for i in 0..m {
            let src = std::slice::from_raw_parts(a.add(i * lda), k);
            let row = i * kp..i * kp + k;
            let (d0, d1, d2) = (&mut p0[row.clone()], &mut p1[row.clone()], &mut p2[row]);
            for ((((&x, h0), h1), h2), _) in src.iter().zip(d0).zip(d1).zip(d2).zip(0..k) {
                [*h0, *h1, *h2] = split(x);
            }
        }
        Self { parts, rows, kp }
    }

    fn tile(&self, part: usize, row: usize, kk: usize) -> *const u16 {
        self.parts[part * self.rows * self.kp + row * self.kp + kk * 32..].as_ptr()
    }
}

/// B's parts for some columns, VNNI: `[PARTS][kp/2][cols][2]`.
struct PackedB {
    parts: Vec<u16>,
    cols: usize,
    kp: usize,
}

impl PackedB {
    /// Columns `j0..j0 + w` of B (`b[p * ldb + j]`, or `b[j * ldb + p]` when
    /// `trans`), padded to a multiple of 32 columns and the depth to 32.
    ///
    /// # Safety
    /// Those elements of `b` are readable for `p < k`.
    unsafe fn new(
        k: usize,
        (j0, w): (usize, usize),
        b: *const f32,
        ldb: usize,
        trans: bool,
    ) -> Self {
        let (cols, kp) = (w.div_ceil(32) * 32, k.div_ceil(32) * 32);
        let plane = kp * cols;
        let mut parts = vec![0u16; PARTS * plane];
        let mut row = vec![0f32; w];
        let mut split_row = vec![[0u16; PARTS]; w];
        for p in 0..k {
            // Row p of B's columns j0.., contiguous.
            if trans {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = *b.add((j0 + j) * ldb + p);
                }
            } else {
                row.copy_from_slice(std::slice::from_raw_parts(b.add(p * ldb + j0), w));
            }
            // Rows p and p + 1 interleave: element (p, j) at [p / 2][j][p % 2].
            for (h, &x) in split_row.iter_mut().zip(&row) {
                *h = split(x);
            }
            let base = (p / 2) * cols * 2 + (p % 2);
            for (q, plane_q) in parts.chunks_exact_mut(plane).enumerate() {
                let dst = &mut plane_q[base..base + 2 * w - 1];
                for (d, h) in dst.iter_mut().step_by(2).zip(&split_row) {
                    *d = h[q];
                }
            }
        }
        Self { parts, cols, kp }
    }

    fn tile(&self, part: usize, kk: usize, col: usize) -> *const u16 {
        self.parts[part * self.kp * self.cols + kk * 16 * self.cols * 2 + col * 2..].as_ptr()
    }
}

/// `c = a · b (+ bias)` (or `a · btᵀ` with `trans`), all row-major: `a: [m, k]`,
/// `b: [k, n]` (`bt: [n, k]`), `c: [m, n]`, on AMX whatever the sizes and
/// whether or not [`enabled`]. Returns false (leaving `c` alone) where AMX is
/// not [`available`] or a length is wrong.
pub fn sgemm_amx(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    trans: bool,
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    if !available()
        || a.len() != m * k
        || b.len() != k * n
        || c.len() != m * n
        || bias.is_some_and(|v| v.len() != n)
        || m == 0
        || n == 0
        || k == 0
    {
        return false;
    }
    let ldb = if trans { k } else { n };
    // SAFETY: AMX is on and the lengths were checked above.
    unsafe {
        gemm(
            (m, n, k),
            a.as_ptr(),
            k,
            b.as_ptr(),
            ldb,
            trans,
            bias.map(<[f32]>::as_ptr),
            c.as_mut_ptr(),
            n,
        );
    }
    true
}

/// `c[i * ldc + j] = Σ_p a[i * lda + p] · b(p, j) (+ bias[j])` for `i < m`,
/// `j` in `cols`, where `b(p, j)` is `b[p * ldb + j]`, or `b[j * ldb + p]` when
/// `trans`. Threads split the columns.
///
/// # Safety
/// [`available`] returned true; every index above lies inside its buffer, and
/// no other thread writes these elements of `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    trans: bool,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
) {
    let packed = PackedA::new(m, k, a, lda);
    let job = Job {
        m,
        k,
        b,
        ldb,
        trans,
        bias,
        c,
        ldc,
    };
    let threads = rayon::current_num_threads().max(1);
    let blocks = n.div_ceil(32);
    if threads == 1 || blocks < 2 {
        job.columns(&packed, 0..n);
    } else {
        use rayon::prelude::*;
        let parts = threads.min(blocks);
        (0..parts).into_par_iter().for_each(|t| {
            let (b0, b1) = (blocks * t / parts, blocks * (t + 1) / parts);
            job.columns(&packed, (b0 * 32).min(n)..(b1 * 32).min(n));
        });
    }
}

struct Job {
    m: usize,
    k: usize,
    b: *const f32,
    ldb: usize,
    trans: bool,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
}

// SAFETY: threads read `b` and `bias` and write disjoint column ranges of `c`,
// all of which outlive the parallel section in `gemm`.
unsafe impl Sync for Job {}

/// Tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Self(c)
    }
}

macro_rules! tile_load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly)
        )
    };
}

macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}

macro_rules! tile_store {
    ($t:literal, $ptr:expr) => {
        asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $ptr,
            s = in(reg) 64usize,
            options(nostack)
        )
    };
}

impl Job {
    /// Columns `cols` of `c`, every row.
    fn columns(&self, a: &PackedA, cols: std::ops::Range<usize>) {
        let cfg = TileConfig::full();
        // SAFETY: `gemm`'s contract: AMX is granted, the ranges lie inside the matrices.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            let mut j0 = cols.start;
            while j0 < cols.end {
                let w = NB.min(cols.end - j0);
                let b = PackedB::new(self.k, (j0, w), self.b, self.ldb, self.trans);
                self.block(a, &b, j0, w);
                j0 += w;
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    /// `c[.., j0..j0 + w]` from packed A and B, 32 × 32 at a time.
    unsafe fn block(&self, a: &PackedA, b: &PackedB, j0: usize, w: usize) {
        let (sa, sb) = (a.kp * 2, b.cols * 4);
        let kt = a.kp / 32;
        let mut out = [0f32; 4 * 256];
        for i in (0..self.m).step_by(32) {
            for j in (0..w).step_by(32) {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for kk in 0..kt {
                    // A's part loaded once for the B parts it meets.
                    for pa in (0..PARTS).rev() {
                        tile_load!("4", a.tile(pa, i, kk), sa);
                        tile_load!("5", a.tile(pa, i + 16, kk), sa);
                        for pb in (0..PARTS - pa).rev() {
                            tile_load!("6", b.tile(pb, kk, j), sb);
                            tile_load!("7", b.tile(pb, kk, j + 16), sb);
                            tile_dot!("0", "4", "6");
                            tile_dot!("1", "4", "7");
                            tile_dot!("2", "5", "6");
                            tile_dot!("3", "5", "7");
                        }
                    }
                }
                tile_store!("0", out.as_mut_ptr());
                tile_store!("1", out.as_mut_ptr().add(256));
                tile_store!("2", out.as_mut_ptr().add(512));
                tile_store!("3", out.as_mut_ptr().add(768));
                self.write(&out, i, j0 + j, (j0 + w).min(j0 + j + 32));
            }
        }
    }

    /// Rows `i..i + 32` (those below `m`) and columns `j..end` of `c` from the
    /// four stored tiles, plus the bias.
    unsafe fn write(&self, out: &[f32; 1024], i: usize, j: usize, end: usize) {
        for r in 0..32.min(self.m - i) {
            let row = self.c.add((i + r) * self.ldc);
            for col in j..end {
                let (tr, tc) = (r / 16, (col - j) / 16);
                let v = out[(tr * 2 + tc) * 256 + (r % 16) * 16 + (col - j) % 16];
                *row.add(col) = match self.bias {
                    Some(bias) => v + *bias.add(col),
                    None => v,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parts_sum_back_to_the_value() {
        for &x in &[
            1.0f32,
            -3.25,
            1e-3,
            123_456.79,
            std::f32::consts::PI,
            -7.1e-20,
        ] {
            let [a, b, c] = split(x);
            let back = f64::from(widen(a)) + f64::from(widen(b)) + f64::from(widen(c));
            assert!(
                (back - f64::from(x)).abs() <= f64::from(x.abs()) * 1e-7,
                "{x}: {back}"
            );
        }
        assert!(widen(bf16(f32::NAN)).is_nan());
    }
}
