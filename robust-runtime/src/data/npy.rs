//! NumPy's `.npy` format (versions 1–3): the magic `\x93NUMPY`, a version, a header length, a
//! Python-literal header `{'descr': '<f4', 'fortran_order': False, 'shape': (N, 28, 28), }`,
//! then the raw values. Little-endian and byte-sized numeric types, C order only.

use std::path::Path;

use crate::{Error, Result};

/// A decoded `.npy` array, values widened to `f64` so that every supported type fits exactly
/// (integers up to 2⁵³).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub values: Vec<f64>,
    /// Whether the stored type was `uint8` (images in 0–255).
    pub is_u8: bool,
    /// Whether the stored type was an integer type.
    pub is_integer: bool,
}

impl NpyArray {
    /// Values as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    /// Values as class labels: a 1-D array of non-negative integers.
    pub fn to_labels(&self, path: &Path) -> Result<Vec<u32>> {
        let bad = |reason: String| Error::format("npy", path, reason);
        if self.shape.len() != 1 {
            return Err(bad(format!(
                "labels have shape {:?}; expected N",
                self.shape
            )));
        }
        if !self.is_integer {
            return Err(bad(
                "labels have a floating-point type; expected integer class indices".into(),
            ));
        }
        self.values
            .iter()
            .map(|&v| {
                if (0.0..=u32::MAX as f64).contains(&v) {
                    Ok(v as u32)
                } else {
                    Err(bad(format!(
                        "label {v}; expected a non-negative class index"
                    )))
                }
            })
            .collect()
    }
}

/// Decodes `.npy` bytes. `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let bad = |reason: String| Error::format("npy", path, reason);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v}; expected 1, 2 or 3"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| {
            bad(format!(
                "header of {header_len} bytes runs past the end of the file"
            ))
        })?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;

    let descr = dict_value(header, "descr")
        .ok_or_else(|| bad(format!("header {header:?} has no 'descr'")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    if fortran != "False" {
        return Err(bad(
            "array is in Fortran order; expected C order (np.ascontiguousarray)".into(),
        ));
    }
    let shape_text =
        dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let shape = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("shape {shape_text}; expected a tuple of integers")))
        })
        .collect::<Result<Vec<_>>>()?;

    let (size, is_integer): (usize, bool) = match descr {
        "|u1" | "<u1" | "|i1" | "<i1" => (1, true),
        "<u2" | "<i2" => (2, true),
        "<u4" | "<i4" => (4, true),
        "<i8" | "<u8" => (8, true),
        "<f4" => (4, false),
        "<f8" => (8, false),
        other => {
            return Err(bad(format!(
                "dtype '{other}'; expected one of u1, i1, u2, i2, u4, i4, u8, i8, f4, f8 (little-endian)"
            )))
        }
    };
    // A header may declare any shape: the byte count is computed with checked arithmetic, so
    // `(1, 2305843009213693952, 8)` is an error here instead of wrapping to 0 bytes.
    let needed = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} of '{descr}' needs more bytes than this machine can address; \
                 expected a shape whose size fits in memory"
            ))
        })?;
    let body = &bytes[start + header_len..];
    if body.len() != needed {
        return Err(bad(format!(
            "{} bytes of data; shape {shape:?} of '{descr}' needs exactly {needed}",
            body.len(),
        )));
    }
    let values: Vec<f64> = body
        .chunks_exact(size)
        .map(|c| match descr.trim_start_matches(['<', '|']) {
            "u1" => c[0] as f64,
            "i1" => c[0] as i8 as f64,
            "u2" => u16::from_le_bytes([c[0], c[1]]) as f64,
            "i2" => i16::from_le_bytes([c[0], c[1]]) as f64,
            "u4" => u32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            "i4" => i32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            "u8" => u64::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            "i8" => i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            "f4" => f32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            _ => f64::from_le_bytes(c.try_into().unwrap_or_default()),
        })
        .collect();
    Ok(NpyArray {
        shape,
        values,
        is_u8: matches!(descr, "|u1" | "<u1"),
        is_integer,
    })
}

/// The text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0usize;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod should {
    use super::*;

    /// A `.npy` file's bytes (version 1, header padded to 64 bytes as NumPy writes it).
    pub(crate) fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(header.len() as u16).to_le_bytes());
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn read_float32_matrices() {
        let body: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(2, 3)", &body), Path::new("x.npy")).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn read_int64_labels_and_one_element_tuples() {
        let body: Vec<u8> = [3i64, 0, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<i8", "(3,)", &body), Path::new("y.npy")).unwrap();
        assert_eq!(a.to_labels(Path::new("y.npy")).unwrap(), vec![3, 0, 9]);
    }

    #[test]
    fn reject_negative_labels() {
        let body: Vec<u8> = [-1i32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<i4", "(1,)", &body), Path::new("y.npy")).unwrap();
        let err = a.to_labels(Path::new("y.npy")).unwrap_err();
        assert!(
            err.to_string()
                .contains("label -1; expected a non-negative class index"),
            "{err}"
        );
    }

    #[test]
    fn reject_big_endian_data() {
        let err = parse_npy(&npy(">f4", "(1,)", &[0; 4]), Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("dtype '>f4'"), "{err}");
    }

    #[test]
    fn reject_a_short_body() {
        let err = parse_npy(&npy("<f4", "(2,)", &[0; 4]), Path::new("x.npy")).unwrap_err();
        assert!(
            err.to_string()
                .contains("4 bytes of data; shape [2] of '<f4' needs exactly 8"),
            "{err}"
        );
    }

    #[test]
    fn reject_a_shape_whose_byte_count_overflows() {
        // 2⁶¹ × 8 elements of 4 bytes wrap to 0 bytes in unchecked arithmetic, so the empty
        // body used to load as an "array" of 2⁶⁴ values.
        let bytes = npy("<f4", "(1, 2305843009213693952, 8)", &[]);
        let err = parse_npy(&bytes, Path::new("x.npy")).unwrap_err();
        assert!(
            matches!(err, Error::Format { format: "npy", .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(
                "shape [1, 2305843009213693952, 8] of '<f4' needs more bytes than this machine \
                 can address"
            ),
            "{err}"
        );
    }

    #[test]
    fn reject_an_element_count_that_overflows_before_the_item_size() {
        let bytes = npy("|u1", "(4294967296, 4294967296)", &[]);
        let err = parse_npy(&bytes, Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("needs more bytes"), "{err}");
    }

    #[test]
    fn reject_fortran_order() {
        let mut bytes = npy("<f4", "(1,)", &[0; 4]);
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        let err = parse_npy(&bytes, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("Fortran order"), "{err}");
    }
}
