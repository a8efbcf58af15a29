//! Labelled data sets: inputs `N × …` (`f32`, on the CPU) and labels `u32`.
//!
//! Loaders: MNIST IDX ([`Dataset::from_idx`], gzip or not), safetensors
//! ([`Dataset::from_safetensors`]) and NumPy `.npy` ([`Dataset::from_npy`]). Integer images
//! stored as `uint8` are scaled to `[0, 1]` (divided by 255) by every loader; floating-point
//! inputs are taken as they are.
//!
//! [`Dataset::mnist_sample`] is the 5,000-digit MNIST sample embedded in the crate, shuffled with a
//! fixed seed and split 4,000 / 1,000:
//!
//! ```
//! use robust_runtime::prelude::*;
//!
//! let test = Dataset::mnist_sample()?.test_split();
//! assert_eq!(test.len(), 1000);
//! assert_eq!(test.sample_shape(), &[1, 28, 28]);
//! # Ok::<(), robust_runtime::Error>(())
//! ```

mod idx;
mod npy;
mod safetensors;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::rng::Rng;
use crate::{Error, Result};

pub use idx::{
    max_inflated, parse_idx, parse_idx_limited, IdxArray, DEFAULT_MAX_INFLATED, MAX_INFLATED_VAR,
};
pub use npy::{parse_npy, NpyArray};
pub(crate) use safetensors::{check_finite_weights, weights_error};

/// Seed of the fixed shuffle of the MNIST sample before its 4,000 / 1,000 split.
pub const MNIST_SAMPLE_SEED: u64 = 2018;
/// Size of the training split of the MNIST sample.
pub const MNIST_SAMPLE_TRAIN: usize = 4000;

static MNIST_IMAGES: &[u8] = include_bytes!("../../data/mnist-5k/images-idx3-ubyte.gz");
static MNIST_LABELS: &[u8] = include_bytes!("../../data/mnist-5k/labels-idx1-ubyte.gz");

/// Labels are class indices below this bound (2²⁰, far above ImageNet-21k's 21,841 classes):
/// a file whose labels claim class 4,294,967,295 is refused when it is loaded, rather than
/// making every per-class table (`class_counts`, confusion counts) allocate gigabytes.
pub const MAX_CLASSES: usize = 1 << 20;

/// Inputs and their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    inputs: Tensor,
    labels: Vec<u32>,
}

/// The MNIST sample split into its fixed training and test parts.
#[derive(Debug, Clone)]
pub struct TrainTest {
    /// 4,000 digits for training.
    pub train: Dataset,
    /// 1,000 digits for evaluation.
    pub test: Dataset,
}

impl TrainTest {
    /// The training split.
    pub fn train_split(self) -> Dataset {
        self.train
    }

    /// The test split.
    pub fn test_split(self) -> Dataset {
        self.test
    }
}

/// One batch of a data set, on the device it was asked for.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Inputs, `B × …`, `f32`.
    pub inputs: Tensor,
    /// Labels, `B`, `u32`, on the same device.
    pub labels: Tensor,
    /// Position of the batch in the data set.
    pub range: std::ops::Range<usize>,
}

impl Dataset {
    /// A data set from inputs `N × …` (converted to `f32` and moved to the CPU) and `N` labels.
    pub fn new(inputs: Tensor, labels: Vec<u32>) -> Result<Self> {
        let n = match inputs.dims().first() {
            Some(&n) => n,
            None => {
                return Err(Error::Data(
                    "inputs is a scalar; expected a tensor N × …".into(),
                ))
            }
        };
        if n != labels.len() {
            return Err(Error::Data(format!(
                "labels has {} rows but inputs has {n}; expected one label per input",
                labels.len()
            )));
        }
        if n == 0 {
            return Err(Error::Data(
                "the data set is empty; expected at least one sample".into(),
            ));
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= MAX_CLASSES) {
            return Err(Error::Data(format!(
                "label {} at index {i} is not a class index robust supports; expected labels \
                 below {MAX_CLASSES} (MAX_CLASSES)",
                labels[i]
            )));
        }
        let inputs = inputs.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let values = inputs.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "input value {} at flat index {i} is not finite; expected finite inputs",
                values[i]
            )));
        }
        Ok(Dataset { inputs, labels })
    }

    /// The embedded MNIST sample (5,000 digits, 500 per class), shuffled with
    /// [`MNIST_SAMPLE_SEED`] and split into 4,000 training and 1,000 test digits.
    pub fn mnist_sample() -> Result<TrainTest> {
        let all =
            Dataset::from_idx_bytes(MNIST_IMAGES, MNIST_LABELS)?.shuffled(MNIST_SAMPLE_SEED)?;
        let (train, test) = all.split_at(MNIST_SAMPLE_TRAIN)?;
        Ok(TrainTest { train, test })
    }

    /// Loads MNIST IDX files (images `N × H × W` or `N × C × H × W` of `uint8`, labels `N` of
    /// `uint8`), gzip-compressed or not. Images come out as `N × 1 × H × W` (or `N × C × H × W`)
    /// scaled to `[0, 1]`. A compressed file may inflate to at most [`max_inflated`] bytes
    /// (256 MiB unless `ROBUST_MAX_INFLATED_BYTES` says otherwise).
    pub fn from_idx(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
        let (ip, lp) = (images.as_ref(), labels.as_ref());
        let images = parse_idx(&read(ip)?, ip)?;
        let labels = parse_idx(&read(lp)?, lp)?;
        Self::from_idx_arrays(images, labels)
    }

    /// [`Dataset::from_idx`] on bytes in memory.
    pub fn from_idx_bytes(images: &[u8], labels: &[u8]) -> Result<Self> {
        let images = parse_idx(images, Path::new("<images>"))?;
        let labels = parse_idx(labels, Path::new("<labels>"))?;
        Self::from_idx_arrays(images, labels)
    }

    fn from_idx_arrays(images: IdxArray, labels: IdxArray) -> Result<Self> {
        let mut dims = images.dims.clone();
        if dims.len() == 3 {
            dims.insert(1, 1);
        }
        if dims.len() != 4 {
            return Err(Error::Data(format!(
                "IDX images have shape {:?}; expected N × H × W or N × C × H × W",
                images.dims
            )));
        }
        if labels.dims.len() != 1 {
            return Err(Error::Data(format!(
                "IDX labels have shape {:?}; expected N",
                labels.dims
            )));
        }
        no_empty_dimension("IDX images", &images.dims)?;
        no_empty_dimension("IDX labels", &labels.dims)?;
        let inputs = Tensor::from_vec(images.data, dims, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .affine(1.0 / 255.0, 0.0)?;
        Dataset::new(inputs, labels.data.into_iter().map(u32::from).collect())
    }

    /// Loads a safetensors file holding an inputs tensor and a labels tensor under the given names.
    /// `uint8` inputs are scaled to `[0, 1]`; labels may be `uint8`, `uint32` or `int64`.
    pub fn from_safetensors(path: impl AsRef<Path>, inputs: &str, labels: &str) -> Result<Self> {
        let path = path.as_ref();
        let mut tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| match e {
                candle_core::Error::Io(io) => Error::io(path, io),
                other => Error::format("safetensors", path, other.to_string()),
            })?;
        let mut take = |name: &str| take_tensor(&mut tensors, path, name);
        let x = take(inputs)?;
        let y = take(labels)?;
        let x = if x.dtype() == DType::U8 {
            x.to_dtype(DType::F32)?.affine(1.0 / 255.0, 0.0)?
        } else {
            x
        };
        let labels = labels_from_tensor(&y, path)?;
        Dataset::new(x, labels)
    }

    /// Loads inputs and labels from two `.npy` files. `uint8` inputs are scaled to `[0, 1]`;
    /// labels must be non-negative integers.
    pub fn from_npy(inputs: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
        let (ip, lp) = (inputs.as_ref(), labels.as_ref());
        let x = parse_npy(&read(ip)?, ip)?;
        let y = parse_npy(&read(lp)?, lp)?;
        no_empty_dimension("npy inputs", &x.shape)?;
        no_empty_dimension("npy labels", &y.shape)?;
        let scale = if x.is_u8 { 1.0 / 255.0 } else { 1.0 };
        let inputs =
            Tensor::from_vec(x.to_f32(), x.shape.clone(), &Device::Cpu)?.affine(scale, 0.0)?;
        let labels = y.to_labels(lp)?;
        Dataset::new(inputs, labels)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always false: an empty data set cannot be built.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All inputs, `N × …`, on the CPU.
    pub fn inputs(&self) -> &Tensor {
        &self.inputs
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Shape of one sample (the inputs' shape without `N`).
    pub fn sample_shape(&self) -> &[usize] {
        &self.inputs.dims()[1..]
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Data(format!(
                "index {bad} is out of range for a data set of {} samples",
                self.len()
            )));
        }
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), &Device::Cpu)?;
        let inputs = self.inputs.index_select(&idx, 0)?;
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Dataset::new(inputs, labels)
    }

    /// The data set in an order drawn from `seed` (Fisher–Yates on ChaCha8).
    pub fn shuffled(&self, seed: u64) -> Result<Dataset> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::seed_from_u64(seed).shuffle(&mut order);
        self.select(&order)
    }

    /// The first `n` samples and the rest; both must be non-empty.
    pub fn split_at(&self, n: usize) -> Result<(Dataset, Dataset)> {
        if n == 0 || n >= self.len() {
            return Err(Error::Data(format!(
                "cannot split {} samples at {n}; expected 0 < n < {}",
                self.len(),
                self.len()
            )));
        }
        let head = Dataset {
            inputs: self.inputs.narrow(0, 0, n)?,
            labels: self.labels[..n].to_vec(),
        };
        let tail = Dataset {
            inputs: self.inputs.narrow(0, n, self.len() - n)?,
            labels: self.labels[n..].to_vec(),
        };
        Ok((head, tail))
    }

    /// The first `n` samples (`n` ≤ len).
    pub fn take(&self, n: usize) -> Result<Dataset> {
        if n == 0 || n > self.len() {
            return Err(Error::Data(format!(
                "asked for {n} samples of a data set of {}; expected 1..={}",
                self.len(),
                self.len()
            )));
        }
        Ok(Dataset {
            inputs: self.inputs.narrow(0, 0, n)?,
            labels: self.labels[..n].to_vec(),
        })
    }

    /// Consecutive batches of at most `batch_size` samples, moved to `device`.
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        let size = batch_size.max(1);
        (0..self.len()).step_by(size).map(move |start| {
            let end = (start + size).min(self.len());
            let inputs = self
                .inputs
                .narrow(0, start, end - start)?
                .to_device(device)?;
            let labels = Tensor::from_slice(&self.labels[start..end], end - start, device)?;
            Ok(Batch {
                inputs,
                labels,
                range: start..end,
            })
        })
    }

    /// Counts of each label, indexed by label (at most [`MAX_CLASSES`] entries: labels are
    /// bounded when the data set is built).
    pub fn class_counts(&self) -> Vec<usize> {
        let classes = self.labels.iter().max().map_or(0, |&m| m as usize + 1);
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// Rejects a shape with a zero dimension before it becomes a tensor: the array holds nothing
/// (a data set needs samples with at least one value each), and with a zero among them the
/// other dimensions can multiply past `usize::MAX` (candle's strides would overflow) although
/// the element count is 0.
fn no_empty_dimension(what: &str, dims: &[usize]) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::Data(format!(
            "{what} have shape {dims:?}; expected no zero dimension (at least one sample of at \
             least one value)"
        )));
    }
    Ok(())
}

fn take_tensor(tensors: &mut HashMap<String, Tensor>, path: &Path, name: &str) -> Result<Tensor> {
    tensors.remove(name).ok_or_else(|| {
        let mut found: Vec<&str> = tensors.keys().map(String::as_str).collect();
        found.sort_unstable();
        Error::MissingTensor {
            path: path.into(),
            name: name.into(),
            found: found.join(", "),
        }
    })
}

fn labels_from_tensor(y: &Tensor, path: &Path) -> Result<Vec<u32>> {
    if y.rank() != 1 {
        return Err(Error::format(
            "safetensors",
            path,
            format!("labels have shape {:?}; expected N", y.dims()),
        ));
    }
    match y.dtype() {
        DType::U8 | DType::U32 => Ok(y.to_dtype(DType::U32)?.to_vec1::<u32>()?),
        DType::I64 => y
            .to_vec1::<i64>()?
            .into_iter()
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    Error::format(
                        "safetensors",
                        path,
                        format!("label {v}; expected a non-negative class index"),
                    )
                })
            })
            .collect(),
        other => Err(Error::format(
            "safetensors",
            path,
            format!("labels have dtype {other:?}; expected u8, u32 or i64 class indices"),
        )),
    }
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn split_the_mnist_sample_into_4000_and_1000_with_every_class_in_both() -> Result<()> {
        let TrainTest { train, test } = Dataset::mnist_sample()?;
        assert_eq!((train.len(), test.len()), (4000, 1000));
        assert_eq!(test.sample_shape(), &[1, 28, 28]);
        let counts = test.class_counts();
        assert_eq!(counts.len(), 10);
        // 100 per class on average; a shuffle that did nothing would give only 9s.
        assert!(counts.iter().all(|&c| (70..130).contains(&c)), "{counts:?}");
        let max = test.inputs().max_all()?.to_scalar::<f32>()?;
        assert!(
            (max - 1.0).abs() < 1e-6,
            "pixels scaled to [0, 1], max {max}"
        );
        Ok(())
    }

    #[test]
    fn split_the_same_way_every_time() -> Result<()> {
        let a = Dataset::mnist_sample()?.test_split();
        let b = Dataset::mnist_sample()?.test_split();
        assert_eq!(a.labels(), b.labels());
        Ok(())
    }

    #[test]
    fn reject_labels_of_another_length() {
        let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = Dataset::new(x, vec![0, 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid dataset: labels has 2 rows but inputs has 3; expected one label per input"
        );
    }

    #[test]
    fn reject_an_empty_data_set() {
        let x = Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(Dataset::new(x, vec![])
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn reject_non_finite_inputs() {
        let x = Tensor::new(&[[0.0f32, f32::NAN]], &Device::Cpu).unwrap();
        assert!(Dataset::new(x, vec![0])
            .unwrap_err()
            .to_string()
            .contains("not finite"));
    }

    #[test]
    fn reject_a_label_beyond_the_class_bound_instead_of_counting_up_to_it() {
        // class_counts used to allocate u32::MAX + 1 counters (32 GiB) and abort the process.
        let x = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let err = Dataset::new(x.clone(), vec![3, u32::MAX]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid dataset: label 4294967295 at index 1 is not a class index robust supports; \
             expected labels below 1048576 (MAX_CLASSES)"
        );
        let data = Dataset::new(x, vec![3, MAX_CLASSES as u32 - 1]).unwrap();
        let counts = data.class_counts();
        assert_eq!(
            (counts.len(), counts[3], counts[MAX_CLASSES - 1]),
            (MAX_CLASSES, 1, 1)
        );
    }

    #[test]
    fn reject_a_zero_dimension_beside_dimensions_whose_product_overflows() {
        // 0 × 2⁴⁰ × 2⁴⁰ holds no value, but candle's strides (2⁸⁰) overflowed: a panic with
        // overflow checks, found by `cargo xtask fuzz idx-gz`.
        let mut images = vec![0, 0, 8, 4];
        for d in [0u32, 0x0008_0100, 0xc800_0004, 0x0002_0102] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        let labels = [0, 0, 8, 1, 0, 0, 0, 0];
        let err = Dataset::from_idx_bytes(&images, &labels).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid dataset: IDX images have shape [0, 524544, 3355443204, 131330]; expected no \
             zero dimension (at least one sample of at least one value)"
        );
    }

    #[test]
    fn load_npy_files_scaling_uint8_images() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("robust-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
        let write =
            |p: &Path, bytes: Vec<u8>| std::fs::write(p, bytes).map_err(|e| Error::io(p, e));
        write(&x, npy::should::npy("|u1", "(2, 1, 2)", &[0, 255, 51, 102]))?;
        let labels: Vec<u8> = [7i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        write(&y, npy::should::npy("<i8", "(2,)", &labels))?;
        let data = Dataset::from_npy(&x, &y)?;
        assert_eq!(data.labels(), &[7, 2]);
        assert_eq!(data.sample_shape(), &[1, 2]);
        let pixels = data.inputs().flatten_all()?.to_vec1::<f32>()?;
        assert!(
            pixels
                .iter()
                .zip([0.0, 1.0, 0.2, 0.4])
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{pixels:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn batch_every_sample_once() -> Result<()> {
        let test = Dataset::mnist_sample()?.test_split().take(10)?;
        let sizes: Vec<usize> = test
            .batches(4, &Device::Cpu)
            .map(|b| b.map(|b| b.range.len()))
            .collect::<Result<_>>()?;
        assert_eq!(sizes, vec![4, 4, 2]);
        Ok(())
    }
}
