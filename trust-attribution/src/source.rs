//! Per-example gradients, grouped into "layers", and the [`GradientSource`] trait that streams
//! them block by block.
//!
//! Every example's gradient is one flat record of `f32`: the layers' flattened gradients one after
//! the other, in the order of [`LayerLayout::dims`]. A LoRA `A` tensor (r × d_in) and a LoRA `B`
//! tensor (stored transposed, r × d_out, as in PROTOCOLS A.8 §2) are two separate layers.

use super::{AttributionError, Result};

/// The layer structure shared by every record of a gradient source: names, flattened sizes and
/// offsets inside a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLayout {
    names: Vec<String>,
    dims: Vec<usize>,
    offsets: Vec<usize>,
    record_len: usize,
}

impl LayerLayout {
    /// A layout with the given `(name, flattened size)` layers.
    ///
    /// Errors when there is no layer, a size is 0, names repeat, or the record length overflows.
    pub fn new<S: Into<String>>(layers: impl IntoIterator<Item = (S, usize)>) -> Result<Self> {
        let mut names = Vec::new();
        let mut dims = Vec::new();
        let mut offsets = Vec::new();
        let mut record_len = 0usize;
        for (name, dim) in layers {
            let name = name.into();
            if dim == 0 {
                return Err(AttributionError::Shape(format!(
                    "layer `{name}` has size 0"
                )));
            }
            if names.contains(&name) {
                return Err(AttributionError::Shape(format!(
                    "layer `{name}` appears twice"
                )));
            }
            offsets.push(record_len);
            record_len = record_len.checked_add(dim).ok_or_else(|| {
                AttributionError::Shape("record length overflows usize".to_string())
            })?;
            names.push(name);
            dims.push(dim);
        }
        if dims.is_empty() {
            return Err(AttributionError::Shape(
                "a gradient layout needs at least one layer".into(),
            ));
        }
        Ok(LayerLayout {
            names,
            dims,
            offsets,
            record_len,
        })
    }

    /// A layout with anonymous layers named `layer0`, `layer1`, ...
    pub fn from_dims(dims: &[usize]) -> Result<Self> {
        Self::new(
            dims.iter()
                .enumerate()
                .map(|(l, &d)| (format!("layer{l}"), d)),
        )
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.dims.len()
    }

    /// Layer names, in record order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Flattened size of each layer, in record order.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Offset of each layer inside a record.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Number of `f32` in one record (sum of the layer sizes).
    pub fn record_len(&self) -> usize {
        self.record_len
    }

    /// Layer `l` of a full record.
    ///
    /// # Panics
    /// When `l >= num_layers()` or `record` is shorter than [`Self::record_len`] (internal
    /// invariant: callers pass records produced by a source with this layout).
    pub fn layer<'a, T>(&self, record: &'a [T], l: usize) -> &'a [T] {
        &record[self.offsets[l]..self.offsets[l] + self.dims[l]]
    }

    /// Checks that `layers` has one slice per layer with the right sizes, naming the offender.
    pub fn check_layers<T>(&self, layers: &[&[T]]) -> Result<()> {
        if layers.len() != self.dims.len() {
            return Err(AttributionError::Shape(format!(
                "expected {} layers, got {}",
                self.dims.len(),
                layers.len()
            )));
        }
        for (l, (g, &d)) in layers.iter().zip(&self.dims).enumerate() {
            if g.len() != d {
                return Err(AttributionError::Shape(format!(
                    "layer {l} (`{}`) has {} values, expected {d}",
                    self.names[l],
                    g.len()
                )));
            }
        }
        Ok(())
    }
}

/// A block of consecutive examples handed out by a [`GradientSource`].
#[derive(Debug, Clone, Copy)]
pub struct GradientBlock<'a> {
    start: usize,
    data: &'a [f32],
    layout: &'a LayerLayout,
}

impl<'a> GradientBlock<'a> {
    /// A block whose first example has global index `start`; `data` holds whole records.
    ///
    /// Errors when `data.len()` is not a multiple of the record length.
    pub fn new(start: usize, data: &'a [f32], layout: &'a LayerLayout) -> Result<Self> {
        if data.len() % layout.record_len() != 0 {
            return Err(AttributionError::Shape(format!(
                "block of {} values is not a whole number of {}-value records",
                data.len(),
                layout.record_len()
            )));
        }
        Ok(GradientBlock {
            start,
            data,
            layout,
        })
    }

    /// Global index of the block's first example.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Number of examples in the block.
    pub fn len(&self) -> usize {
        self.data.len() / self.layout.record_len()
    }

    /// Whether the block holds no example.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The layout of every record.
    pub fn layout(&self) -> &'a LayerLayout {
        self.layout
    }

    /// Full record of the block's `k`-th example (`k < len()`), or `None`.
    pub fn record(&self, k: usize) -> Option<&'a [f32]> {
        let r = self.layout.record_len();
        self.data.get(k * r..(k + 1) * r)
    }

    /// Iterates `(global index, record)` over the block's examples.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &'a [f32])> + 'a {
        let start = self.start;
        self.data
            .chunks_exact(self.layout.record_len())
            .enumerate()
            .map(move |(k, r)| (start + k, r))
    }
}

/// Something that can stream per-example gradients, block by block, in index order.
///
/// Memory use of a consumer stays bounded by one block, whatever the number of examples: DataInf
/// makes three passes (see [`mod@super::datainf`]).
pub trait GradientSource {
    /// The layer structure of every record.
    fn layout(&self) -> &LayerLayout;

    /// Number of examples.
    fn len(&self) -> usize;

    /// Whether the source holds no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` on consecutive blocks of at most `max_block` examples (at least 1), covering
    /// indices `0..len()` in order. Stops at and returns the first error of `f` or of the source.
    fn for_each_block(
        &self,
        max_block: usize,
        f: &mut dyn FnMut(GradientBlock<'_>) -> Result<()>,
    ) -> Result<()>;
}

/// Gradients held in memory (tests, small problems, test-side gradients).
#[derive(Debug, Clone)]
pub struct InMemoryGradients {
    layout: LayerLayout,
    data: Vec<f32>,
}

impl InMemoryGradients {
    /// An empty store with `layout`.
    pub fn new(layout: LayerLayout) -> Self {
        InMemoryGradients {
            layout,
            data: Vec::new(),
        }
    }

    /// Appends one example given as one slice per layer.
    pub fn push(&mut self, layers: &[&[f32]]) -> Result<()> {
        self.layout.check_layers(layers)?;
        for g in layers {
            self.data.extend_from_slice(g);
        }
        Ok(())
    }

    /// Appends one example given as a full record.
    pub fn push_record(&mut self, record: &[f32]) -> Result<()> {
        if record.len() != self.layout.record_len() {
            return Err(AttributionError::Shape(format!(
                "record has {} values, expected {}",
                record.len(),
                self.layout.record_len()
            )));
        }
        self.data.extend_from_slice(record);
        Ok(())
    }

    /// Full record of example `i`, or `None`.
    pub fn record(&self, i: usize) -> Option<&[f32]> {
        let r = self.layout.record_len();
        self.data.get(i * r..(i + 1) * r)
    }

    /// All records, concatenated.
    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }
}

impl GradientSource for InMemoryGradients {
    fn layout(&self) -> &LayerLayout {
        &self.layout
    }

    fn len(&self) -> usize {
        self.data.len() / self.layout.record_len()
    }

    fn for_each_block(
        &self,
        max_block: usize,
        f: &mut dyn FnMut(GradientBlock<'_>) -> Result<()>,
    ) -> Result<()> {
        let per = max_block.max(1) * self.layout.record_len();
        for (b, chunk) in self.data.chunks(per).enumerate() {
            f(GradientBlock::new(
                b * max_block.max(1),
                chunk,
                &self.layout,
            )?)?;
        }
        Ok(())
    }
}

/// Per-layer `f64` vectors with the sizes of a [`LayerLayout`] (a test gradient, an inverse-HVP).
pub type LayerVectors = Vec<Vec<f64>>;

/// Mean gradient over all examples of `source`, per layer, accumulated in `f64`:
/// v_l = (1/m) Σ_j g_jl. This is the test-side vector of DataInf.
///
/// Errors when the source is empty or holds a non-finite value.
pub fn mean_gradient(source: &dyn GradientSource, max_block: usize) -> Result<LayerVectors> {
    let layout = source.layout().clone();
    let m = source.len();
    if m == 0 {
        return Err(AttributionError::InvalidArgument(
            "cannot average the gradients of an empty source".into(),
        ));
    }
    let mut sum: LayerVectors = layout.dims().iter().map(|&d| vec![0.0f64; d]).collect();
    let mut seen = 0usize;
    source.for_each_block(max_block, &mut |block| {
        for (i, rec) in block.iter() {
            check_finite(rec, i, &layout)?;
            for (l, acc) in sum.iter_mut().enumerate() {
                for (a, &g) in acc.iter_mut().zip(layout.layer(rec, l)) {
                    *a += f64::from(g);
                }
            }
            seen += 1;
        }
        Ok(())
    })?;
    if seen != m {
        return Err(AttributionError::InvalidArgument(format!(
            "source announced {m} examples but streamed {seen}"
        )));
    }
    let inv = 1.0 / m as f64;
    for acc in &mut sum {
        for a in acc.iter_mut() {
            *a *= inv;
        }
    }
    Ok(sum)
}

/// Errors with the example index and layer name when `record` holds a NaN or infinity.
pub(crate) fn check_finite(record: &[f32], index: usize, layout: &LayerLayout) -> Result<()> {
    if let Some(pos) = record.iter().position(|x| !x.is_finite()) {
        let l = layout.offsets().partition_point(|&o| o <= pos) - 1;
        return Err(AttributionError::NonFinite(format!(
            "example {index}, layer `{}`, entry {}: {}",
            layout.names()[l],
            pos - layout.offsets()[l],
            record[pos]
        )));
    }
    Ok(())
}

/// Checks that `v` has one vector per layer of `layout` with the right sizes, all finite.
pub(crate) fn check_layer_vectors(v: &[Vec<f64>], layout: &LayerLayout, what: &str) -> Result<()> {
    if v.len() != layout.num_layers() {
        return Err(AttributionError::Shape(format!(
            "{what}: expected {} layers, got {}",
            layout.num_layers(),
            v.len()
        )));
    }
    for (l, (x, &d)) in v.iter().zip(layout.dims()).enumerate() {
        if x.len() != d {
            return Err(AttributionError::Shape(format!(
                "{what}: layer {l} (`{}`) has {} values, expected {d}",
                layout.names()[l],
                x.len()
            )));
        }
        if x.iter().any(|a| !a.is_finite()) {
            return Err(AttributionError::NonFinite(format!(
                "{what}: layer `{}` holds a non-finite value",
                layout.names()[l]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_offsets_and_blocks() {
        let layout = LayerLayout::from_dims(&[2, 3]).unwrap();
        assert_eq!(layout.offsets(), &[0, 2]);
        assert_eq!(layout.record_len(), 5);
        let mut g = InMemoryGradients::new(layout);
        for i in 0..5 {
            let x = i as f32;
            g.push(&[&[x, x], &[x, x, x]]).unwrap();
        }
        assert!(g.push(&[&[1.0], &[1.0, 2.0, 3.0]]).is_err());
        let mut starts = Vec::new();
        let mut seen = Vec::new();
        g.for_each_block(2, &mut |b| {
            starts.push((b.start(), b.len()));
            for (i, r) in b.iter() {
                assert_eq!(r[0], i as f32);
                seen.push(i);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(starts, vec![(0, 2), (2, 2), (4, 1)]);
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn layout_rejects_bad_shapes() {
        assert!(LayerLayout::from_dims(&[]).is_err());
        assert!(LayerLayout::from_dims(&[3, 0]).is_err());
        assert!(LayerLayout::new([("a", 1), ("a", 2)]).is_err());
    }

    #[test]
    fn non_finite_is_located() {
        let layout = LayerLayout::new([("A", 2), ("B", 2)]).unwrap();
        let err = check_finite(&[0.0, 1.0, 2.0, f32::NAN], 7, &layout)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("example 7") && err.contains("`B`") && err.contains("entry 1"),
            "{err}"
        );
    }
}
