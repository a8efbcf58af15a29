//! Checks on safetensors weight files that candle's loaders do not make.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

use crate::{Error, Result};

/// The error of weights that do not fit the architecture loading them: for a tensor the file
/// lacks, [`Error::MissingWeight`] with the tensors it has; otherwise what candle said.
pub(crate) fn weights_error(model: &'static str, path: &Path, source: candle_core::Error) -> Error {
    let said = source.to_string();
    let missing = said
        .split("cannot find tensor ")
        .nth(1)
        .map(|rest| rest.split_whitespace().next().unwrap_or(rest).to_string());
    // SAFETY: the file is memory-mapped read-only, as candle's own loaders do.
    let file = unsafe { MmapedSafetensors::new(path) };
    match (missing, file) {
        (Some(name), Ok(file)) => {
            let mut has: Vec<String> = file
                .tensors()
                .into_iter()
                .map(|(n, view)| format!("`{n}` {:?}", view.shape()))
                .collect();
            has.sort_unstable();
            const SHOWN: usize = 24;
            let more = has.len().saturating_sub(SHOWN);
            has.truncate(SHOWN);
            let mut has = if has.is_empty() {
                "no tensors".to_string()
            } else {
                has.join(", ")
            };
            if more > 0 {
                has += &format!(" and {more} more");
            }
            Error::MissingWeight {
                model,
                path: path.to_path_buf(),
                name,
                has,
            }
        }
        _ => Error::Weights {
            model,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Rejects a weight file that holds a NaN or an infinite value, naming the tensor: such a
/// network computes non-finite activations that surface far from their cause (a certifier
/// reporting non-finite bounds, an attack whose gradients vanish). `model` names the
/// architecture in the error for a file that cannot be mapped.
pub(crate) fn check_finite_weights(model: &'static str, path: &Path) -> Result<()> {
    let weights = |source| Error::Weights {
        model,
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: the file is memory-mapped read-only, as candle's own loaders do.
    let file = unsafe { MmapedSafetensors::new(path) }.map_err(weights)?;
    let mut names: Vec<String> = file.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort_unstable();
    for name in names {
        let tensor = file.load(&name, &Device::Cpu).map_err(weights)?;
        if !tensor.dtype().is_float() {
            continue;
        }
        let values = tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteWeight {
                path: path.to_path_buf(),
                tensor: name,
                value: values[index],
                index,
            });
        }
    }
    Ok(())
}
