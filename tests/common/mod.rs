//! Shared by the integration tests: the committed fixtures and the MNIST test split.
#![allow(dead_code)]

use robust_runtime::prelude::*;

pub const MLP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_mlp.safetensors"
);
pub const CNN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_cnn.safetensors"
);

pub fn mlp() -> robust_runtime::Result<Model> {
    Ok(Model::new(zoo::MnistMlp::load(MLP, &Device::Cpu)?).named("mnist_mlp"))
}

pub fn cnn() -> robust_runtime::Result<Model> {
    Ok(Model::new(zoo::MnistCnn::load(CNN, &Device::Cpu)?).named("mnist_cnn"))
}

/// The first `n` digits of the MNIST sample's test split.
pub fn test_digits(n: usize) -> robust_runtime::Result<Dataset> {
    Dataset::mnist_sample()?.test_split().take(n)
}
