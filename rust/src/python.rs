//! PyO3 bindings: `phenovec._core`. Converts arrays and errors, releases the GIL, calls the core.
//! No logic of its own lives here.
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::average_precision as ap;
use crate::error::EvalError;
use crate::null;
use crate::pairs::{Labels, MultiMode, PairRule};
use crate::ranking::{rank_units, Units};
use crate::similarity::{spearman_rows as core_spearman_rows, Metric, Prepared, Real};

fn err(e: EvalError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A float32 or float64 feature matrix.
#[derive(FromPyObject)]
enum Feats<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

fn to_usize(v: PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Vec<usize>> {
    v.as_array()
        .iter()
        .map(|&x| usize::try_from(x).map_err(|_| PyValueError::new_err(format!("{what}: negative value {x}"))))
        .collect()
}

fn codes(a: PyReadonlyArray2<'_, i64>) -> Vec<Vec<i64>> {
    a.as_array().rows().into_iter().map(|r| r.to_vec()).collect()
}

fn rule(
    n: usize,
    same: PyReadonlyArray2<'_, i64>,
    diff: PyReadonlyArray2<'_, i64>,
    multi: &str,
    labels: &Option<Labels>,
) -> PyResult<PairRule> {
    let m = match (multi, labels) {
        ("none", _) => None,
        ("same", Some(l)) => Some((l.clone(), MultiMode::Same)),
        ("diff", Some(l)) => Some((l.clone(), MultiMode::Diff)),
        _ => return Err(PyValueError::new_err(format!("multilabel mode {multi:?} needs labels and one of none/same/diff"))),
    };
    PairRule::new(n, codes(same), codes(diff), m).map_err(err)
}

/// Similarities of `rows` against all rows of `x` (cosine, pearson, spearman, euclidean = -distance).
#[pyfunction]
fn similarity_block<'py>(py: Python<'py>, x: Feats<'py>, metric: &str, rows: PyReadonlyArray1<'py, i64>) -> PyResult<PyObject> {
    let metric = Metric::parse(metric).map_err(err)?;
    let rows = to_usize(rows, "rows")?;
    fn go<'py, T: Real + numpy::Element>(py: Python<'py>, x: PyReadonlyArray2<'py, T>, m: Metric, rows: Vec<usize>) -> PyResult<PyObject> {
        let xv = x.as_array();
        if let Some(&r) = rows.iter().find(|&&r| r >= xv.nrows()) {
            return Err(PyValueError::new_err(format!("row {r} out of range (N = {})", xv.nrows())));
        }
        let out = py.allow_threads(|| Prepared::new(xv, m).map(|p| p.block(&rows))).map_err(err)?;
        Ok(out.into_pyarray(py).into_any().unbind())
    }
    match x {
        Feats::F32(a) => go(py, a, metric, rows),
        Feats::F64(a) => go(py, a, metric, rows),
    }
}

/// A feature matrix prepared once for one metric (`phenovec._core.Prepared(x, metric)`); `block(rows, cols=None)`
/// gives the similarities of `rows` against all rows or against the rows `cols`, without preparing again.
/// Values are bit-identical to `similarity_block(x, metric, rows)` (and to it on `x[cols]` for a column subset).
#[pyclass(name = "Prepared", module = "phenovec._core", frozen)]
struct PyPrepared {
    inner: PreparedAny,
}

enum PreparedAny {
    F32(Prepared<f32>),
    F64(Prepared<f64>),
}

fn check_rows(v: PyReadonlyArray1<'_, i64>, n: usize, what: &str) -> PyResult<Vec<usize>> {
    let rows = to_usize(v, what)?;
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(PyValueError::new_err(format!("{what}: row {r} out of range (N = {n})")));
    }
    Ok(rows)
}

#[pymethods]
impl PyPrepared {
    #[new]
    fn new(py: Python<'_>, x: Feats<'_>, metric: &str) -> PyResult<Self> {
        let metric = Metric::parse(metric).map_err(err)?;
        let inner = match &x {
            Feats::F32(a) => {
                let v = a.as_array();
                py.allow_threads(|| Prepared::new(v, metric)).map(PreparedAny::F32)
            }
            Feats::F64(a) => {
                let v = a.as_array();
                py.allow_threads(|| Prepared::new(v, metric)).map(PreparedAny::F64)
            }
        }
        .map_err(err)?;
        Ok(PyPrepared { inner })
    }

    /// Similarities of `rows` against all rows (cols None) or against the rows `cols`: rows x N or rows x len(cols).
    #[pyo3(signature = (rows, cols=None))]
    fn block<'py>(&self, py: Python<'py>, rows: PyReadonlyArray1<'py, i64>, cols: Option<PyReadonlyArray1<'py, i64>>) -> PyResult<PyObject> {
        let n = self.n();
        let rows = check_rows(rows, n, "rows")?;
        let cols = cols.map(|c| check_rows(c, n, "cols")).transpose()?;
        Ok(match &self.inner {
            PreparedAny::F32(p) => py.allow_threads(|| p.block_cols(&rows, cols.as_deref())).into_pyarray(py).into_any().unbind(),
            PreparedAny::F64(p) => py.allow_threads(|| p.block_cols(&rows, cols.as_deref())).into_pyarray(py).into_any().unbind(),
        })
    }

    /// Number of rows N.
    #[getter]
    fn n(&self) -> usize {
        match &self.inner {
            PreparedAny::F32(p) => p.n(),
            PreparedAny::F64(p) => p.n(),
        }
    }

    /// The metric's name.
    #[getter]
    fn metric(&self) -> &'static str {
        match &self.inner {
            PreparedAny::F32(p) => p.metric().name(),
            PreparedAny::F64(p) => p.metric().name(),
        }
    }
}

/// Validate a feature matrix for a metric (finite; non-zero norm / variance) without computing.
#[pyfunction]
fn check_features(x: Feats<'_>, metric: &str) -> PyResult<()> {
    let metric = Metric::parse(metric).map_err(err)?;
    match x {
        Feats::F32(a) => Prepared::new(a.as_array(), metric).map(|_| ()),
        Feats::F64(a) => Prepared::new(a.as_array(), metric).map(|_| ()),
    }
    .map_err(err)
}

/// Spearman's prepared rows, as `Prepared` holds them: `(z, inv)` with `z = 2 r - (D + 1)` (the doubled centred
/// average ranks of each row) and `inv` each row's inverse norm, in the input's float type. Other engines (the torch
/// path) take these so that their similarity blocks are the core's bits.
#[pyfunction]
fn spearman_rows<'py>(py: Python<'py>, x: Feats<'py>) -> PyResult<(PyObject, PyObject)> {
    fn go<'py, T: Real + numpy::Element>(py: Python<'py>, x: PyReadonlyArray2<'py, T>) -> PyResult<(PyObject, PyObject)> {
        let mut z = x.as_array().as_standard_layout().into_owned();
        let inv = py
            .allow_threads(|| core_spearman_rows(&mut z))
            .map_err(|row| err(EvalError::ZeroVariance { row, metric: "spearman" }))?;
        Ok((z.into_pyarray(py).into_any().unbind(), inv.into_pyarray(py).into_any().unbind()))
    }
    match x {
        Feats::F32(a) => go(py, a),
        Feats::F64(a) => go(py, a),
    }
}

/// Shared arguments of the ranking entry points.
struct RankArgs {
    units: Units,
    pos: PairRule,
    neg: PairRule,
    block_rows: usize,
    f32_keys: bool,
}

#[allow(clippy::too_many_arguments)]
fn rank_args(
    n: usize,
    unit_offsets: PyReadonlyArray1<'_, i64>,
    unit_rows: PyReadonlyArray1<'_, i64>,
    unit_labels: Option<PyReadonlyArray1<'_, i64>>,
    pos_same: PyReadonlyArray2<'_, i64>,
    pos_diff: PyReadonlyArray2<'_, i64>,
    pos_multi: &str,
    neg_same: PyReadonlyArray2<'_, i64>,
    neg_diff: PyReadonlyArray2<'_, i64>,
    neg_multi: &str,
    label_offsets: Option<PyReadonlyArray1<'_, i64>>,
    label_items: Option<PyReadonlyArray1<'_, i64>>,
    block_rows: usize,
    f32_keys: bool,
) -> PyResult<RankArgs> {
    let labels = match (label_offsets, label_items) {
        (Some(o), Some(i)) => Some(Labels::new(to_usize(o, "label offsets")?, i.as_array().to_vec()).map_err(err)?),
        _ => None,
    };
    let units = Units::new(
        to_usize(unit_offsets, "unit offsets")?,
        to_usize(unit_rows, "unit rows")?,
        unit_labels.map(|l| l.as_array().to_vec()),
        n,
    )
    .map_err(err)?;
    Ok(RankArgs {
        units,
        pos: rule(n, pos_same, pos_diff, pos_multi, &labels)?,
        neg: rule(n, neg_same, neg_diff, neg_multi, &labels)?,
        block_rows,
        f32_keys,
    })
}

fn nrows(x: &Feats<'_>) -> usize {
    match x {
        Feats::F32(a) => a.as_array().nrows(),
        Feats::F64(a) => a.as_array().nrows(),
    }
}

/// Per-unit AP, M and L. Returns (ap float64[U], n_pos uint64[U], n_total uint64[U]).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (x, metric, unit_offsets, unit_rows, unit_labels, pos_same, pos_diff, pos_multi, neg_same, neg_diff, neg_multi, label_offsets, label_items, block_rows, f32_keys=false))]
fn average_precision<'py>(
    py: Python<'py>,
    x: Feats<'py>,
    metric: &str,
    unit_offsets: PyReadonlyArray1<'py, i64>,
    unit_rows: PyReadonlyArray1<'py, i64>,
    unit_labels: Option<PyReadonlyArray1<'py, i64>>,
    pos_same: PyReadonlyArray2<'py, i64>,
    pos_diff: PyReadonlyArray2<'py, i64>,
    pos_multi: &str,
    neg_same: PyReadonlyArray2<'py, i64>,
    neg_diff: PyReadonlyArray2<'py, i64>,
    neg_multi: &str,
    label_offsets: Option<PyReadonlyArray1<'py, i64>>,
    label_items: Option<PyReadonlyArray1<'py, i64>>,
    block_rows: usize,
    f32_keys: bool,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>)> {
    let metric = Metric::parse(metric).map_err(err)?;
    let a = rank_args(
        nrows(&x), unit_offsets, unit_rows, unit_labels, pos_same, pos_diff, pos_multi, neg_same, neg_diff, neg_multi,
        label_offsets, label_items, block_rows, f32_keys,
    )?;
    fn go<T: Real>(x: ndarray::ArrayView2<T>, m: Metric, a: &RankArgs) -> Result<Vec<ap::Ap>, EvalError> {
        let p = Prepared::new(x, m)?;
        Ok(ap::average_precision(&p, &a.units, &a.pos, &a.neg, a.block_rows, a.f32_keys))
    }
    let res = match &x {
        Feats::F32(v) => {
            let xv = v.as_array();
            py.allow_threads(|| go(xv, metric, &a))
        }
        Feats::F64(v) => {
            let xv = v.as_array();
            py.allow_threads(|| go(xv, metric, &a))
        }
    }
    .map_err(err)?;
    let aps: Vec<f64> = res.iter().map(|r| r.ap).collect();
    let m: Vec<u64> = res.iter().map(|r| r.n_pos).collect();
    let l: Vec<u64> = res.iter().map(|r| r.n_total).collect();
    Ok((aps.into_pyarray(py), m.into_pyarray(py), l.into_pyarray(py)))
}

/// Per-unit 0-based positive ranks in CSR form: (offsets uint64[U+1], ranks uint64[sum M],
/// n_total uint64[U]).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (x, metric, unit_offsets, unit_rows, unit_labels, pos_same, pos_diff, pos_multi, neg_same, neg_diff, neg_multi, label_offsets, label_items, block_rows, f32_keys=false))]
fn positive_ranks<'py>(
    py: Python<'py>,
    x: Feats<'py>,
    metric: &str,
    unit_offsets: PyReadonlyArray1<'py, i64>,
    unit_rows: PyReadonlyArray1<'py, i64>,
    unit_labels: Option<PyReadonlyArray1<'py, i64>>,
    pos_same: PyReadonlyArray2<'py, i64>,
    pos_diff: PyReadonlyArray2<'py, i64>,
    pos_multi: &str,
    neg_same: PyReadonlyArray2<'py, i64>,
    neg_diff: PyReadonlyArray2<'py, i64>,
    neg_multi: &str,
    label_offsets: Option<PyReadonlyArray1<'py, i64>>,
    label_items: Option<PyReadonlyArray1<'py, i64>>,
    block_rows: usize,
    f32_keys: bool,
) -> PyResult<(Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>)> {
    let metric = Metric::parse(metric).map_err(err)?;
    let a = rank_args(
        nrows(&x), unit_offsets, unit_rows, unit_labels, pos_same, pos_diff, pos_multi, neg_same, neg_diff, neg_multi,
        label_offsets, label_items, block_rows, f32_keys,
    )?;
    fn go<T: Real>(x: ndarray::ArrayView2<T>, m: Metric, a: &RankArgs) -> Result<Vec<(Vec<u64>, u64)>, EvalError> {
        let p = Prepared::new(x, m)?;
        Ok(rank_units(&p, &a.units, &a.pos, &a.neg, a.block_rows, a.f32_keys, |_, r| (r.ranks.to_vec(), r.n_total)))
    }
    let res = match &x {
        Feats::F32(v) => {
            let xv = v.as_array();
            py.allow_threads(|| go(xv, metric, &a))
        }
        Feats::F64(v) => {
            let xv = v.as_array();
            py.allow_threads(|| go(xv, metric, &a))
        }
    }
    .map_err(err)?;
    let mut offsets = Vec::with_capacity(res.len() + 1);
    offsets.push(0u64);
    let mut ranks = Vec::new();
    let mut totals = Vec::with_capacity(res.len());
    for (r, t) in res {
        ranks.extend_from_slice(&r);
        offsets.push(ranks.len() as u64);
        totals.push(t);
    }
    Ok((offsets.into_pyarray(py), ranks.into_pyarray(py), totals.into_pyarray(py)))
}

/// Fast null: (len(ms) x null_size) AP values of random rankings, one row per (M, L) config.
#[pyfunction]
fn random_ap<'py>(
    py: Python<'py>,
    ms: PyReadonlyArray1<'py, i64>,
    ls: PyReadonlyArray1<'py, i64>,
    null_size: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let ms = to_usize(ms, "n_pos_pairs")?;
    let ls = to_usize(ls, "n_total_pairs")?;
    if ms.len() != ls.len() {
        return Err(err(EvalError::Length { what: "n_total_pairs".into(), expected: ms.len(), got: ls.len() }));
    }
    let rows = py
        .allow_threads(|| {
            ms.iter().zip(&ls).map(|(&m, &l)| null::random_ap(m as u64, l as u64, null_size, seed)).collect::<Result<Vec<_>, _>>()
        })
        .map_err(err)?;
    let mut out = ndarray::Array2::<f64>::zeros((rows.len(), null_size));
    for (mut o, r) in out.rows_mut().into_iter().zip(rows) {
        o.assign(&ndarray::Array1::from(r));
    }
    Ok(out.into_pyarray(py))
}

// ---- ingest: decode + crop (crate::image, crate::crop) ----

fn ingest_err(e: crate::image::IngestError) -> PyErr {
    match e {
        crate::image::IngestError::NotFound { .. } => pyo3::exceptions::PyFileNotFoundError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Decode page `frame` of a TIFF (default the first), or a PNG, greyscale 8/16-bit, to uint16 (H, W).
#[pyfunction]
#[pyo3(signature = (path, frame=0))]
fn decode_image<'py>(py: Python<'py>, path: std::path::PathBuf, frame: usize) -> PyResult<Bound<'py, PyArray2<u16>>> {
    let im = py.allow_threads(|| crate::image::decode_path_frame(&path, frame)).map_err(ingest_err)?;
    let a = ndarray::Array2::from_shape_vec((im.height, im.width), im.data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// Decode a label image (8/16/32-bit unsigned TIFF or PNG, first page) to uint32 (H, W).
#[pyfunction]
fn decode_labels<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let l = py.allow_threads(|| crate::image::decode_labels(&path)).map_err(ingest_err)?;
    let a = ndarray::Array2::from_shape_vec((l.height, l.width), l.data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

fn centers_of(xs: &PyReadonlyArray1<'_, f64>, ys: &PyReadonlyArray1<'_, f64>) -> PyResult<Vec<(f64, f64)>> {
    let (xs, ys) = (xs.as_array(), ys.as_array());
    if xs.len() != ys.len() {
        return Err(PyValueError::new_err(format!("xs has {} centres but ys has {}", xs.len(), ys.len())));
    }
    Ok(xs.iter().zip(ys.iter()).map(|(&x, &y)| (x, y)).collect())
}

/// Each cell's object label in a label image by DeepProfiler's 10 x 10 median rule
/// (crate::labels::deepprofiler_label): uint32 N.
#[pyfunction]
fn object_labels<'py>(py: Python<'py>, path: std::path::PathBuf, xs: PyReadonlyArray1<'py, f64>, ys: PyReadonlyArray1<'py, f64>) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let c = centers_of(&xs, &ys)?;
    let v = py.allow_threads(|| crate::site::object_labels(&path, &c)).map_err(ingest_err)?;
    Ok(v.into_pyarray(py))
}

/// Crop one site: decode (parallel, GIL released) -> illumination correction (`flat`) -> intensity
/// rescale -> crop with the edge policy -> mask -> per-crop min-max (`rescale`) -> dtype.
/// Returns (crops rows x C x box x box, int8 edge-outcome codes N). Semantics and dtype rules:
/// crate::site. `intensity` is None, ("percentile", lo, hi) or ("range", lo, hi); `mask` is None,
/// "neighbors" or "object"; `dtype` None, "uint8", "uint16", "float16" or "float32".
/// `out`: a C-contiguous float32 array of at least N x C x box x box values to write the crops
/// into (crate::site::crop_site_into; float32 options only); the crops returned are then a view of
/// its first rows.
#[pyfunction]
#[pyo3(signature = (paths, xs, ys, box_size, edge, rescale, *, frames=None, flat=None, intensity=None, labels=None, label_ids=None, mask=None, dtype=None, compact=false, out=None))]
#[allow(clippy::too_many_arguments)]
fn crop_site<'py>(
    py: Python<'py>,
    paths: Vec<std::path::PathBuf>,
    xs: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray1<'py, f64>,
    box_size: usize,
    edge: &str,
    rescale: bool,
    frames: Option<Vec<i64>>,
    flat: Option<numpy::PyReadonlyArray3<'py, f32>>,
    intensity: Option<(String, f64, f64)>,
    labels: Option<std::path::PathBuf>,
    label_ids: Option<PyReadonlyArray1<'py, i64>>,
    mask: Option<String>,
    dtype: Option<String>,
    compact: bool,
    out: Option<numpy::PyReadwriteArrayDyn<'py, f32>>,
) -> PyResult<(PyObject, Bound<'py, PyArray1<i8>>)> {
    use crate::crop::EdgePolicy;
    use crate::intensity::{Rescale, StackShape};
    use crate::site::{Crops, Flat, OutDtype, SiteOptions};
    let edge = EdgePolicy::parse(edge).map_err(ingest_err)?;
    let centers = centers_of(&xs, &ys)?;
    let frames: Option<Vec<usize>> = frames
        .map(|f| {
            f.iter()
                .enumerate()
                .map(|(i, &v)| usize::try_from(v).map_err(|_| PyValueError::new_err(format!("frames[{i}] = {v} is negative (pages are numbered from 0)"))))
                .collect::<PyResult<Vec<usize>>>()
        })
        .transpose()?;
    let flat_owned: Option<(Vec<f32>, StackShape)> = flat.as_ref().map(|a| {
        let v = a.as_array();
        let sh = v.shape();
        (v.iter().copied().collect(), StackShape::new(sh[0], sh[1], sh[2]))
    });
    let intensity = match intensity {
        None => None,
        Some((k, a, b)) => Some(match k.as_str() {
            "percentile" => Rescale::Percentile { low: a, high: b },
            "range" => Rescale::Range { lo: a, hi: b },
            _ => return Err(PyValueError::new_err(format!("unknown intensity mode {k:?}: use (\"percentile\", lo, hi) or (\"range\", lo, hi)"))),
        }),
    };
    let mask = mask.map(|m| crate::labels::MaskMode::parse(&m)).transpose().map_err(ingest_err)?;
    let dtype = dtype.map(|d| OutDtype::parse(&d)).transpose().map_err(ingest_err)?;
    let ids: Option<Vec<i64>> = label_ids.map(|a| a.as_array().to_vec());
    let opts = SiteOptions {
        frames: frames.as_deref(),
        flat: flat_owned.as_ref().map(|(d, s)| Flat { data: d, shape: *s }),
        intensity,
        labels,
        label_ids: ids.as_deref(),
        mask,
        dtype,
        compact,
        rescale,
    };
    if let Some(mut buf) = out {
        let slice = buf.as_slice_mut().map_err(|_| PyValueError::new_err("out must be a C-contiguous float32 array"))?;
        let done = py.allow_threads(|| crate::site::crop_site_into(&paths, &centers, box_size, edge, &opts, slice)).map_err(ingest_err)?;
        let n = done.rows * done.channels * box_size * box_size;
        let flat = buf.as_any().call_method1("reshape", (-1,))?;
        let crops = flat.get_item(pyo3::types::PySlice::new(py, 0, n as isize, 1))?.call_method1("reshape", ((done.rows, done.channels, box_size, box_size),))?;
        let codes: Vec<i8> = done.outcomes.iter().map(|o| o.code()).collect();
        return Ok((crops.unbind(), codes.into_pyarray(py)));
    }
    let out = py.allow_threads(|| crate::site::crop_site(&paths, &centers, box_size, edge, &opts)).map_err(ingest_err)?;
    let shape = (out.rows, out.channels, box_size, box_size);
    let bad = |e: ndarray::ShapeError| PyValueError::new_err(e.to_string());
    let crops: PyObject = match out.crops {
        Crops::U8(v) => ndarray::Array4::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py).into_any().unbind(),
        Crops::U16(v) => ndarray::Array4::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py).into_any().unbind(),
        Crops::F16(v) => ndarray::Array4::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py).into_any().unbind(),
        Crops::F32(v) => ndarray::Array4::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py).into_any().unbind(),
    };
    let codes: Vec<i8> = out.outcomes.iter().map(|o| o.code()).collect();
    Ok((crops, codes.into_pyarray(py)))
}

// ---- ingest: illumination correction, intensity rescaling, field tiles (crate::intensity, crate::tiles) ----

/// A uint16 or float32 image: H x W, or a C x H x W stack of planes.
#[derive(FromPyObject)]
enum Pixels<'py> {
    U16(numpy::PyReadonlyArrayDyn<'py, u16>),
    F32(numpy::PyReadonlyArrayDyn<'py, f32>),
}

/// (values in C-order as f32, shape, stack shape) of an H x W or C x H x W array.
fn stack_of<T: Copy + Into<f32> + numpy::Element>(
    a: &numpy::PyReadonlyArrayDyn<'_, T>,
    what: &str,
) -> PyResult<(Vec<f32>, Vec<usize>, crate::intensity::StackShape)> {
    let v = a.as_array();
    let shape = v.shape().to_vec();
    let st = match shape[..] {
        [h, w] => crate::intensity::StackShape::new(1, h, w),
        [c, h, w] => crate::intensity::StackShape::new(c, h, w),
        _ => return Err(PyValueError::new_err(format!("{what} must be 2-D (H x W) or 3-D (C x H x W), got shape {shape:?}"))),
    };
    Ok((v.iter().map(|&x| x.into()).collect(), shape, st))
}

fn pixels(x: &Pixels<'_>, what: &str) -> PyResult<(Vec<f32>, Vec<usize>, crate::intensity::StackShape)> {
    match x {
        Pixels::U16(a) => stack_of(a, what),
        Pixels::F32(a) => stack_of(a, what),
    }
}

fn f32_array<'py>(py: Python<'py>, shape: Vec<usize>, data: Vec<f32>) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// Divide an image (uint16/float32, H x W or C x H x W) by a float32 flat field of the same shape;
/// returns float32. Flat-field values must be finite and > 0 (see crate::intensity).
#[pyfunction]
fn correct_illumination<'py>(py: Python<'py>, image: Pixels<'py>, flat: numpy::PyReadonlyArrayDyn<'py, f32>) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let (x, shape, st) = pixels(&image, "image")?;
    let (f, fshape, fst) = stack_of(&flat, "flat field")?;
    if shape.len() != fshape.len() {
        return Err(PyValueError::new_err(format!("flat field has shape {fshape:?} but the image has shape {shape:?}")));
    }
    let out = py.allow_threads(|| crate::intensity::correct_illumination(&x, st, &f, fst)).map_err(ingest_err)?;
    f32_array(py, shape, out)
}

fn rescale<'py>(py: Python<'py>, x: Pixels<'py>, r: crate::intensity::Rescale) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let (mut v, shape, st) = pixels(&x, "image")?;
    py.allow_threads(|| r.apply(&mut v, st)).map_err(ingest_err)?;
    f32_array(py, shape, v)
}

/// Per-plane percentile clip to [0, 1] (np.percentile linear), H x W or C x H x W; float32 out.
#[pyfunction]
fn rescale_percentile<'py>(py: Python<'py>, x: Pixels<'py>, low: f64, high: f64) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    rescale(py, x, crate::intensity::Rescale::Percentile { low, high })
}

/// Fixed range [lo, hi] -> [0, 1], clipped; float32 out.
#[pyfunction]
fn rescale_range<'py>(py: Python<'py>, x: Pixels<'py>, lo: f64, hi: f64) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    rescale(py, x, crate::intensity::Rescale::Range { lo, hi })
}

/// Decode a site's channels and block-mean downsample by `factor`: float32 C x H/f x W/f.
#[pyfunction]
#[pyo3(signature = (paths, factor=1))]
fn field_tiles<'py>(py: Python<'py>, paths: Vec<std::path::PathBuf>, factor: usize) -> PyResult<Bound<'py, numpy::PyArray3<f32>>> {
    let t = py.allow_threads(|| crate::tiles::site_tile(&paths, factor)).map_err(ingest_err)?;
    let a = ndarray::Array3::from_shape_vec((t.channels, t.height, t.width), t.data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// Decode a site's channels and cut tile_h x tile_w views every `stride` pixels: uint16 V x C x th x tw.
#[pyfunction]
fn field_views<'py>(py: Python<'py>, paths: Vec<std::path::PathBuf>, tile_h: usize, tile_w: usize, stride: usize) -> PyResult<Bound<'py, numpy::PyArray4<u16>>> {
    let (v, c, data) = py.allow_threads(|| crate::tiles::site_views(&paths, tile_h, tile_w, stride)).map_err(ingest_err)?;
    let a = ndarray::Array4::from_shape_vec((v, c, tile_h, tile_w), data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

// ---- float16 storage (crate::float16) ----

/// A C-contiguous float32 array cast to float16, same shape (crate::float16::features_to_f16:
/// numpy's rounding bit for bit, F16C when the CPU has it; a finite value beyond float16's range is
/// a ValueError naming its row and column of the last axis), GIL released.
#[pyfunction]
fn to_float16<'py>(py: Python<'py>, x: numpy::PyReadonlyArrayDyn<'py, f32>) -> PyResult<Bound<'py, numpy::PyArrayDyn<half::f16>>> {
    let src = x.as_slice().map_err(|_| PyValueError::new_err("to_float16 needs a C-contiguous float32 array"))?;
    let shape = x.as_array().shape().to_vec();
    let row_len = shape.last().copied().unwrap_or(1);
    let v = py.allow_threads(|| crate::float16::features_to_f16(src, row_len)).map_err(err)?;
    let a = ndarray::ArrayD::from_shape_vec(shape, v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(similarity_block, m)?)?;
    m.add_function(wrap_pyfunction!(check_features, m)?)?;
    m.add_function(wrap_pyfunction!(spearman_rows, m)?)?;
    m.add_class::<PyPrepared>()?;
    m.add_function(wrap_pyfunction!(average_precision, m)?)?;
    m.add_function(wrap_pyfunction!(positive_ranks, m)?)?;
    m.add_function(wrap_pyfunction!(random_ap, m)?)?;
    m.add_function(wrap_pyfunction!(decode_image, m)?)?;
    m.add_function(wrap_pyfunction!(crop_site, m)?)?;
    m.add_function(wrap_pyfunction!(decode_labels, m)?)?;
    m.add_function(wrap_pyfunction!(object_labels, m)?)?;
    m.add_function(wrap_pyfunction!(correct_illumination, m)?)?;
    m.add_function(wrap_pyfunction!(rescale_percentile, m)?)?;
    m.add_function(wrap_pyfunction!(rescale_range, m)?)?;
    m.add_function(wrap_pyfunction!(field_tiles, m)?)?;
    m.add_function(wrap_pyfunction!(field_views, m)?)?;
    m.add_function(wrap_pyfunction!(to_float16, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
