//! The ΔW of each LoRA kind (docs/lora-kinds-reference.md §3–5) from a module's factors, on
//! the host in f32: `[out, in·kh·kw]`, a weight with its kernel flattened into the columns
//! (column `c·kh·kw + y·kw + x`, the spec's `W_flat`). Products of two low-rank matrices —
//! LoRA's and LoHa's, where nearly all of the work is — are not expanded here but multiplied
//! on the device ([`low_rank_fits`], [`loha_fits`]); the rest (LoKr's Kronecker product, of
//! one multiplication per weight, and Tucker cores) runs once per `set_loras` in plain loops.
//!
//! Every function takes the shape of the weight the module changes and returns `None` when
//! the factors do not fit it (or each other), before computing anything: a file's shapes
//! never make a result larger than the weight.

/// A tensor of a LoRA file (or a ΔW) in f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl Array {
    fn matrix(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        Self {
            shape: vec![rows, cols],
            values,
        }
    }

    /// The rows of the 2-D view: the first dimension.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The columns of the 2-D view: the other dimensions flattened.
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The 2-D view, transposed.
    fn transposed(&self) -> Self {
        let (rows, cols) = (self.rows(), self.cols());
        let values = (0..cols * rows)
            .map(|i| self.values[(i % rows) * cols + i / rows])
            .collect();
        Self::matrix(cols, rows, values)
    }
}

/// How many inputs a weight `[out, in(, kh, kw)]` reads per output: `in·kh·kw`.
pub(crate) fn fan_in(weight: &[usize]) -> usize {
    weight.iter().skip(1).product()
}

/// LoRA and LoCon (§3): whether `up` `[out, r(, 1, 1)]` and `down` `[r, in(, kh, kw)]` fit
/// `weight`, for `ΔW = up_flat @ down_flat`.
pub(crate) fn low_rank_fits(up: &Array, down: &Array, weight: &[usize]) -> bool {
    up.rows() == weight[0] && up.cols() == down.rows() && down.cols() == fan_in(weight)
}

/// LoCon with a Tucker core (§3): per kernel position,
/// `ΔW[:, :, y, x] = up_flat @ mid[:, :, y, x] @ down_flat` for `up` `[out, r, 1, 1]`,
/// `mid` `[r, r, kh, kw]` and `down` `[r, in, 1, 1]`.
pub(crate) fn locon_tucker(
    up: &Array,
    mid: &Array,
    down: &Array,
    weight: &[usize],
) -> Option<Array> {
    if up.rows() != weight[0] || down.cols() != weight[1] {
        return None;
    }
    tucker(mid, &up.transposed(), down, &weight[2..])
}

/// LoHa (§4): whether the pairs `(a, b)`, `[out, r]` and `[r, in·kh·kw]`, fit `weight`, for
/// `ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b)`.
pub(crate) fn loha_fits(w1: &(Array, Array), w2: &(Array, Array), weight: &[usize]) -> bool {
    low_rank_fits(&w1.0, &w1.1, weight) && low_rank_fits(&w2.0, &w2.1, weight)
}

/// LoHa with Tucker cores (§4): each Hadamard factor rebuilt per kernel position as
/// `aᵀ @ t[:, :, y, x] @ b` from `a` `[r, out]`, `b` `[r, in]`, `t` `[r, r, kh, kw]`.
pub(crate) fn loha_tucker(
    w1: &(Array, Array),
    w2: &(Array, Array),
    (t1, t2): &(Array, Array),
    weight: &[usize],
) -> Option<Array> {
    let factor = |(a, b): &(Array, Array), core: &Array| {
        let fits = a.cols() == weight[0] && b.cols() == weight[1];
        fits.then(|| tucker(core, a, b, &weight[2..])).flatten()
    };
    hadamard(factor(w1, t1)?, &factor(w2, t2)?)
}

/// A LoKr factor as a file stores it (§5): whole (`lokr_w1`, `lokr_w2`), as a product
/// (`lokr_w*_a` `[rows, r]` @ `lokr_w*_b` `[r, cols]`), or, `w2` only, with a Tucker core
/// (`lokr_t2` `[r, r, kh, kw]`, `lokr_w2_a` `[r, rows]`, `lokr_w2_b` `[r, d]`).
#[derive(Debug)]
pub(crate) enum Factor {
    Whole(Array),
    Product(Array, Array),
    Tucker { core: Array, a: Array, b: Array },
}

impl Factor {
    /// `[rows, cols]` of the factor's 2-D form (a kernel `kernel` flattened into the
    /// columns), from its parts' shapes.
    fn shape(&self, kernel: &[usize]) -> [usize; 2] {
        match self {
            Self::Whole(w) => [w.rows(), w.cols()],
            Self::Product(a, b) => [a.rows(), b.cols()],
            Self::Tucker { a, b, .. } => [a.cols(), b.cols() * kernel.iter().product::<usize>()],
        }
    }

    /// The factor's 2-D form; `None` when its parts do not fit together.
    fn value(&self, kernel: &[usize]) -> Option<Array> {
        match self {
            Self::Whole(w) => Some(Array::matrix(w.rows(), w.cols(), w.values.clone())),
            Self::Product(a, b) => matmul(a, b),
            Self::Tucker { core, a, b } => tucker(core, a, b, kernel),
        }
    }

    /// The rank of a factored factor, `None` for a whole one.
    fn rank(&self) -> Option<usize> {
        match self {
            Self::Whole(_) => None,
            Self::Product(_, b) | Self::Tucker { b, .. } => Some(b.rows()),
        }
    }
}

/// The rank LoKr divides `alpha` by (§5, as A1111 and ComfyUI): `w2`'s if it is factored,
/// else `w1`'s. `None` when both are whole: the scale is then 1, whatever `alpha` says.
pub(crate) fn lokr_rank(w1: &Factor, w2: &Factor) -> Option<usize> {
    w2.rank().or(w1.rank())
}

/// LoKr (§5): `kron(w1, w2)` of the factors' 2-D forms, `[a·b, c·d·kh·kw]`.
pub(crate) fn lokr(w1: &Factor, w2: &Factor, weight: &[usize]) -> Option<Array> {
    let kernel = &weight[2..];
    let ([a, c], [b, d]) = (w1.shape(kernel), w2.shape(kernel));
    if a.checked_mul(b) != Some(weight[0]) || c.checked_mul(d) != Some(fan_in(weight)) {
        return None;
    }
    Some(kron(&w1.value(kernel)?, &w2.value(kernel)?))
}

/// `a @ b` of the 2-D views; `None` when `a`'s columns are not `b`'s rows.
fn matmul(a: &Array, b: &Array) -> Option<Array> {
    let (rows, inner, cols) = (a.rows(), a.cols(), b.cols());
    if b.rows() != inner {
        return None;
    }
    let mut out = vec![0f32; rows * cols];
    for (out_row, a_row) in out.chunks_exact_mut(cols).zip(a.values.chunks_exact(inner)) {
        for (&x, b_row) in a_row.iter().zip(b.values.chunks_exact(cols)) {
            for (o, &y) in out_row.iter_mut().zip(b_row) {
                *o += x * y;
            }
        }
    }
    Some(Array::matrix(rows, cols, out))
}

/// `a ⊙ b`, element by element; `None` when the shapes differ.
fn hadamard(mut a: Array, b: &Array) -> Option<Array> {
    if a.shape != b.shape {
        return None;
    }
    for (x, &y) in a.values.iter_mut().zip(&b.values) {
        *x *= y;
    }
    Some(a)
}

/// `kron(a, b)` of the 2-D views: element `[i·b.rows + j, k·b.cols + l]` is `a[i, k]·b[j, l]`.
fn kron(a: &Array, b: &Array) -> Array {
    let (a_cols, b_rows, b_cols) = (a.cols(), b.rows(), b.cols());
    let cols = a_cols * b_cols;
    let mut out = vec![0f32; a.rows() * b_rows * cols];
    for (i, a_row) in a.values.chunks_exact(a_cols).enumerate() {
        for (j, b_row) in b.values.chunks_exact(b_cols).enumerate() {
            let out_row = &mut out[(i * b_rows + j) * cols..][..cols];
            for (out_block, &x) in out_row.chunks_exact_mut(b_cols).zip(a_row) {
                for (o, &y) in out_block.iter_mut().zip(b_row) {
                    *o = x * y;
                }
            }
        }
    }
    Array::matrix(a.rows() * b_rows, cols, out)
}

/// LyCORIS' `rebuild_tucker` (§3–5): `P[o, c, y, x] = Σ_ij core[i, j, y, x]·a[i, o]·b[j, c]`,
/// i.e. per kernel position `aᵀ @ core[:, :, y, x] @ b`, for `core` `[r1, r2, kh, kw]`, `a`
/// `[r1, out]`, `b` `[r2, in]`; as `[out, in·kh·kw]`. `None` unless the core is
/// `[a.rows, b.rows, kernel…]`.
fn tucker(core: &Array, a: &Array, b: &Array, kernel: &[usize]) -> Option<Array> {
    let (r1, r2) = (a.rows(), b.rows());
    if core.shape.len() != 2 + kernel.len()
        || core.shape[..2] != [r1, r2]
        || core.shape[2..] != *kernel
    {
        return None;
    }
    let (out, inputs, positions) = (a.cols(), b.cols(), kernel.iter().product::<usize>());
    let a_t = a.transposed();
    let mut p = vec![0f32; out * inputs * positions];
    for q in 0..positions {
        let slice: Vec<f32> = (0..r1 * r2)
            .map(|ij| core.values[ij * positions + q])
            .collect();
        let at_position = matmul(&a_t, &matmul(&Array::matrix(r1, r2, slice), b)?)?;
        for (oc, &value) in at_position.values.iter().enumerate() {
            p[oc * positions + q] = value;
        }
    }
    Some(Array::matrix(out, inputs * positions, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(shape: &[usize], values: &[f32]) -> Array {
        Array {
            shape: shape.to_vec(),
            values: values.to_vec(),
        }
    }

    #[test]
    fn matrix_helpers() {
        let a = array(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = array(&[3, 1, 1], &[1.0, 0.0, -1.0]);
        assert_eq!(matmul(&a, &b), Some(array(&[2, 1], &[-2.0, -2.0])));
        assert_eq!(matmul(&b, &b), None);
        assert_eq!(
            a.transposed(),
            array(&[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0])
        );
        let k = kron(&array(&[1, 2], &[1.0, 10.0]), &array(&[2, 1], &[2.0, 3.0]));
        assert_eq!(k, array(&[2, 2], &[2.0, 20.0, 3.0, 30.0]));
    }

    /// A Tucker rebuild equals the sum it stands for.
    #[test]
    fn tucker_is_the_sum() {
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0)
                .collect()
        };
        let (r1, r2, out, inputs, kh, kw) = (2, 3, 4, 5, 3, 2);
        let core = array(&[r1, r2, kh, kw], &values(r1 * r2 * kh * kw, 1));
        let a = array(&[r1, out], &values(r1 * out, 2));
        let b = array(&[r2, inputs], &values(r2 * inputs, 3));
        let p = tucker(&core, &a, &b, &[kh, kw]).unwrap();
        assert_eq!(p.shape, [out, inputs * kh * kw]);
        for (o, c, y, x) in [(0, 0, 0, 0), (3, 4, 2, 1), (1, 2, 1, 0)] {
            let mut sum = 0.0;
            for i in 0..r1 {
                for j in 0..r2 {
                    sum += core.values[((i * r2 + j) * kh + y) * kw + x]
                        * a.values[i * out + o]
                        * b.values[j * inputs + c];
                }
            }
            assert_eq!(
                p.values[o * inputs * kh * kw + c * kh * kw + y * kw + x],
                sum
            );
        }
        assert_eq!(tucker(&core, &a, &b, &[3, 3]), None);
    }
}
