//! Images laid out in a grid and written as one PNG: the picture of a counterexample
//! (original / perturbed / difference) or of a batch of adversarial examples.
//!
//! ```no_run
//! use robust_runtime::report::png_grid::{write_grid, Image};
//!
//! let original = vec![0.0f32; 28 * 28];
//! let perturbed = vec![0.5f32; 28 * 28];
//! let row = [
//!     Image::new(&original, 1, 28, 28, (0.0, 1.0))?,
//!     Image::new(&perturbed, 1, 28, 28, (0.0, 1.0))?,
//! ];
//! write_grid("target/robust/example.png".as_ref(), &[&row], 4)?;
//! # Ok::<(), robust_runtime::Error>(())
//! ```

use std::path::Path;

use crate::{Error, Result};

/// Pixels between cells and around the grid, at the grid's scale, in mid grey.
const GAP: usize = 2;
const GAP_VALUE: u8 = 128;

/// One image to draw: `channels × height × width` values (channel-major, as the tensors),
/// mapped linearly from `range` to black–white and clipped. One channel is drawn grey, three as
/// RGB, any other number as the mean of the channels.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    values: &'a [f32],
    channels: usize,
    height: usize,
    width: usize,
    range: (f32, f32),
}

impl<'a> Image<'a> {
    /// An image; `values` must hold `channels × height × width` values and `range` be a
    /// non-empty interval.
    pub fn new(
        values: &'a [f32],
        channels: usize,
        height: usize,
        width: usize,
        range: (f32, f32),
    ) -> Result<Self> {
        if values.len() != channels * height * width || values.is_empty() {
            return Err(Error::Data(format!(
                "an image of {} values cannot be drawn as {channels}×{height}×{width}; expected \
                 {} values",
                values.len(),
                channels * height * width
            )));
        }
        if range.0.is_nan() || range.1.is_nan() || range.0 >= range.1 {
            return Err(Error::param(
                "range",
                format!("{:?}", range),
                "an interval lo < hi",
            ));
        }
        Ok(Image {
            values,
            channels,
            height,
            width,
            range,
        })
    }

    /// The RGB colour of pixel `(row, col)`.
    fn rgb(&self, row: usize, col: usize) -> [u8; 3] {
        let plane = self.height * self.width;
        let at = |c: usize| self.values[c * plane + row * self.width + col];
        let byte = |v: f32| {
            let t = (v - self.range.0) / (self.range.1 - self.range.0);
            (t.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        match self.channels {
            3 => [byte(at(0)), byte(at(1)), byte(at(2))],
            n => {
                let mean = (0..n).map(at).sum::<f32>() / n as f32;
                let g = byte(mean);
                [g, g, g]
            }
        }
    }
}

/// Writes `rows` of images as one RGB PNG at `path` (folders created), each pixel drawn as a
/// `scale × scale` block, cells separated by grey lines. Cells of different sizes are placed
/// top-left in a cell as large as the largest.
pub fn write_grid(path: &Path, rows: &[&[Image<'_>]], scale: usize) -> Result<()> {
    let scale = scale.max(1);
    let cell_h = rows
        .iter()
        .flat_map(|r| r.iter())
        .map(|i| i.height)
        .max()
        .unwrap_or(0);
    let cell_w = rows
        .iter()
        .flat_map(|r| r.iter())
        .map(|i| i.width)
        .max()
        .unwrap_or(0);
    let columns = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if columns == 0 {
        return Err(Error::Data("a grid with no images cannot be drawn".into()));
    }
    let width = GAP + columns * (cell_w * scale + GAP);
    let height = GAP + rows.len() * (cell_h * scale + GAP);
    let mut pixels = vec![GAP_VALUE; width * height * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            let top = GAP + r * (cell_h * scale + GAP);
            let left = GAP + c * (cell_w * scale + GAP);
            for y in 0..image.height * scale {
                for x in 0..image.width * scale {
                    let rgb = image.rgb(y / scale, x / scale);
                    let at = ((top + y) * width + left + x) * 3;
                    pixels[at..at + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encoded = encoder.write_header().and_then(|mut writer| {
        writer.write_image_data(&pixels)?;
        writer.finish()
    });
    encoded.map_err(|e| Error::format("PNG", path, e.to_string()))
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn write_a_png_of_the_expected_size_with_the_pixels_in_place() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("robust-png-{}", std::process::id()));
        let path = dir.join("grid.png");
        let black = vec![0.0f32; 4];
        let white = vec![1.0f32; 4];
        let row = [
            Image::new(&black, 1, 2, 2, (0.0, 1.0))?,
            Image::new(&white, 1, 2, 2, (0.0, 1.0))?,
        ];
        write_grid(&path, &[&row], 3)?;
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?,
        ));
        let mut reader = decoder
            .read_info()
            .map_err(|e| Error::format("PNG", &path, e.to_string()))?;
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| Error::format("PNG", &path, e.to_string()))?;
        // 2 + 2 × (2·3 + 2) wide, 2 + (2·3 + 2) high.
        assert_eq!((info.width, info.height), (18, 10));
        let px = |x: usize, y: usize| buf[(y * 18 + x) * 3];
        assert_eq!(
            (px(0, 0), px(2, 2), px(7, 7), px(10, 2), px(15, 7)),
            (128, 0, 0, 255, 255)
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn reject_values_that_do_not_fill_the_shape() {
        assert!(Image::new(&[0.0; 5], 1, 2, 2, (0.0, 1.0)).is_err());
        assert!(Image::new(&[0.0; 4], 1, 2, 2, (1.0, 1.0)).is_err());
    }
}
