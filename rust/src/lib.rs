//! phenovec core: pure-Rust engines behind the `phenovec` Python package.
//!
//! Modules mirror the Python face one to one:
//! - [`similarity`]: row-normalised feature matrices and blocked similarity (cosine, Pearson,
//!   Spearman, negative Euclidean) so that at most one block of the N x N matrix exists at a time.
//! - [`pairs`]: which pairs of profiles are positives / negatives (copairs' sameby / diffby rules,
//!   multilabel columns).
//! - [`ranking`]: per-query (or per query-group) ranks of the positives among all candidates, with
//!   one tie rule: a positive and a negative with equal similarity rank the positive first.
//! - [`average_precision`]: AP from those ranks, streamed without storing ranks.
//! - [`null`]: seeded random-ranking null distributions of AP (the fast sampler).
//! - [`error`]: the one error type the bindings convert.
//! - Ingest: [`image`] (TIFF/PNG decode, label images), [`intensity`] (illumination correction,
//!   rescaling), [`crop`] (crop geometry and edge policies), [`labels`] (cell labels and masking),
//!   [`site`] (one site's crop pipeline), [`tiles`] (whole-field tiles), [`buffer`] (large output
//!   buffers on huge pages).
//! - [`matmul`]: the similarity GEMM (run-time SIMD dispatch; values independent of the block shape).
//! - [`float16`]: float32 -> float16 casts of feature rows (embeddings stored as float16).
pub mod average_precision;
pub mod buffer;
pub mod crop;
pub mod error;
pub mod float16;
pub mod image;
pub mod intensity;
pub mod labels;
pub mod matmul;
pub mod null;
pub mod pairs;
pub mod ranking;
pub mod similarity;
pub mod site;
pub mod tiles;

#[cfg(feature = "python")]
mod python;
