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

/// The largest number of bytes a gzip-compressed IDX file may inflate to unless the caller
/// says otherwise: 256 MiB, five times the 60,000 MNIST training images. A few hundred kB of
/// gzip can claim gigabytes, so the limit keeps an untrusted file from exhausting memory;
/// raise it with [`MAX_INFLATED_VAR`] or [`parse_idx_limited`].
pub const DEFAULT_MAX_INFLATED: usize = 256 << 20;

/// Environment variable overriding [`DEFAULT_MAX_INFLATED`] (a number of bytes) for
/// [`parse_idx`] and the loaders built on it ([`Dataset::from_idx`](crate::Dataset::from_idx)).
pub const MAX_INFLATED_VAR: &str = crate::env::MAX_INFLATED_BYTES.name;

/// The limit [`parse_idx`] applies: `ROBUST_MAX_INFLATED_BYTES` if set, else
/// [`DEFAULT_MAX_INFLATED`].
pub fn max_inflated() -> Result<usize> {
    Ok(crate::env::parse(
        crate::env::MAX_INFLATED_BYTES,
        "a number of bytes, e.g. 1073741824 for 1 GiB",
    )?
    .unwrap_or(DEFAULT_MAX_INFLATED))
}

/// Decodes IDX bytes (gzip-compressed or not). `path` is only used in error messages. A
/// compressed file may inflate to at most [`max_inflated`] bytes.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    parse_idx_limited(bytes, path, max_inflated()?)
}

/// [`parse_idx`] with an explicit limit on the size a gzip-compressed file inflates to.
pub fn parse_idx_limited(bytes: &[u8], path: &Path, max_inflated: usize) -> Result<IdxArray> {
    let bad = |reason: String| Error::format("IDX", path, reason);
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        raw = inflate(bytes, max_inflated, &bad)?;
        raw.as_slice()
    } else {
        bytes
    };
    let (dims, header) = read_header(bytes, &bad)?;
    let count = element_count(&dims, &bad)?;
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

/// The dimensions and the header's length, from the first bytes of a (plain) IDX file.
fn read_header(bytes: &[u8], bad: &dyn Fn(String) -> Error) -> Result<(Vec<usize>, usize)> {
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
    let dims = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    Ok((dims, header))
}

fn element_count(dims: &[usize], bad: &dyn Fn(String) -> Error) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))
}

/// Inflates a gzip stream, reading no more than its IDX header declares (plus one byte, to
/// notice trailing data) and never more than `limit` bytes, so a small file that claims to be
/// huge costs at most `limit` bytes of memory.
fn inflate(bytes: &[u8], limit: usize, bad: &dyn Fn(String) -> Error) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| bad(format!("gzip stream is corrupt ({e})"));
    let mut gz = flate2::read::GzDecoder::new(bytes);
    // The magic, type and rank, then the dimensions: at most 4 + 4 × 255 bytes.
    let mut out = Vec::new();
    (&mut gz).take(4).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() == 4 {
        let rank = out[3] as u64;
        (&mut gz)
            .take(4 * rank)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
    }
    let declared = match read_header(&out, bad) {
        Ok((dims, header)) => element_count(&dims, bad)?.saturating_add(header),
        // Too short or not IDX: the plain parser names what is wrong.
        Err(_) => return Ok(out),
    };
    if declared > limit {
        return Err(bad(format!(
            "its header declares {declared} bytes once inflated; expected at most {limit} (the \
             limit on inflated size; raise it with {MAX_INFLATED_VAR} or parse_idx_limited)"
        )));
    }
    let want = declared.saturating_sub(out.len()).saturating_add(1) as u64;
    (&mut gz)
        .take(want)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    Ok(out)
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

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn refuse_to_inflate_a_gzip_bomb_beyond_the_limit() {
        // 16 MiB of zeros compress to ~16 kB; the header claims every byte of it.
        let mut plain = idx(&[256, 256, 256], &[]);
        plain.resize(plain.len() + (16 << 20), 0);
        let gz = gzip(&plain);
        assert!(gz.len() < 50_000, "{}", gz.len());
        let err = parse_idx_limited(&gz, Path::new("bomb.gz"), 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains(
                "its header declares 16777232 bytes once inflated; expected at most 1048576"
            ),
            "{err}"
        );
        // Within the limit it loads.
        assert_eq!(
            parse_idx_limited(&gz, Path::new("ok.gz"), 1 << 25)
                .unwrap()
                .data
                .len(),
            16 << 20
        );
    }

    #[test]
    fn stop_inflating_a_stream_longer_than_its_header_declares() {
        // The header says 6 bytes; the stream holds 50 MiB more, which are never inflated.
        let mut plain = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        plain.resize(plain.len() + (50 << 20), 0);
        let err = parse_idx_limited(&gzip(&plain), Path::new("x.gz"), 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed IDX file x.gz: 7 bytes of data; dimensions [2, 3] need exactly 6"
        );
    }

    #[test]
    fn reject_a_corrupt_gzip_stream() {
        let err = parse_idx(&[0x1f, 0x8b, 0, 1, 2, 3], Path::new("x.gz")).unwrap_err();
        assert!(err.to_string().contains("gzip stream is corrupt"), "{err}");
    }
}
