//! The MNIST IDX format: two zero bytes, a type code, the number of dimensions, one big-endian
//! `u32` per dimension, then the values. Only `uint8` values (type code `0x08`) are read, which is
//! what every MNIST-style data set uses. Gzip-compressed files are recognised by their magic bytes.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// A decoded IDX array of `uint8`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<u8>,
}

/// Decodes IDX bytes (gzip-compressed or not). `path` is only used in error messages.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |reason: String| Error::format("IDX", path, reason);
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip stream is corrupt ({e})")))?;
        raw = out;
        raw.as_slice()
    } else {
        bytes
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "header starts with {:02x?}; expected the IDX magic 00 00 <type> <rank>",
            &bytes[..bytes.len().min(4)]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "value type 0x{:02x}; expected 0x08 (uint8)",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(bad("rank 0; expected at least one dimension".into()));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(format!(
            "{} bytes; the header of a rank-{rank} array needs {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(bad(format!(
            "{} bytes of data; dimensions {dims:?} need exactly {count}",
            body.len()
        )));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

#[cfg(test)]
mod should {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn read_plain_and_gzipped_files_alike() {
        let plain = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let a = parse_idx(&plain, Path::new("a")).unwrap();
        let b = parse_idx(&gz, Path::new("b")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.dims, vec![2, 3]);
    }

    #[test]
    fn reject_a_truncated_body() {
        let err = parse_idx(&idx(&[2, 3], &[1, 2, 3]), Path::new("x.idx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed IDX file x.idx: 3 bytes of data; dimensions [2, 3] need exactly 6"
        );
    }

    #[test]
    fn reject_a_wrong_magic() {
        let err = parse_idx(b"PK\x03\x04rest", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("expected the IDX magic"), "{err}");
    }

    #[test]
    fn reject_non_uint8_values() {
        let mut bytes = idx(&[1], &[0, 0, 0, 0]);
        bytes[2] = 0x0d;
        assert!(parse_idx(&bytes, Path::new("x"))
            .unwrap_err()
            .to_string()
            .contains("expected 0x08"));
    }

    #[test]
    fn reject_a_corrupt_gzip_stream() {
        let err = parse_idx(&[0x1f, 0x8b, 0, 1, 2, 3], Path::new("x.gz")).unwrap_err();
        assert!(err.to_string().contains("gzip stream is corrupt"), "{err}");
    }
}
