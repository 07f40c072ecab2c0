//! The core's error type. The bindings turn every variant into a Python `ValueError` whose text
//! names the offending row, column or argument.
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EvalError {
    #[error("feature matrix has a non-finite value ({value}) at row {row}, feature column {col}")]
    NonFinite { row: usize, col: usize, value: f64 },
    #[error("row {row} has zero norm: cosine similarity is undefined for it")]
    ZeroNorm { row: usize },
    #[error("row {row} is constant across features (zero variance): {metric} correlation is undefined for it")]
    ZeroVariance { row: usize, metric: &'static str },
    #[error("{what}: expected length {expected}, got {got}")]
    Length { what: String, expected: usize, got: usize },
    #[error("unknown similarity metric {0:?}: use one of cosine, pearson (correlation), spearman, euclidean")]
    UnknownMetric(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;
