//! Grafting a hand-written backward pass onto a value computed by candle's own kernels.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Storage, Tensor,
};

/// The backward pass of a grafted node: `(input, output, output gradient) → input gradient`.
type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// `value`, computed from `arg.detach()` by candle's own operations (on any device), as a node of
/// `arg`'s autograd graph whose backward pass is `backward(arg, value, grad)`.
///
/// This is how the layers of this module keep candle's fast forward kernels but choose their
/// own gradient: the custom op's forward only hands over a copy of `value`'s storage. When
/// nothing upstream needs a gradient, `value` is returned as it is, without a copy.
pub(crate) fn graft(
    arg: &Tensor,
    value: Tensor,
    name: &'static str,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !arg.track_op() {
        return Ok(value);
    }
    // The op's output takes the storage's layout as contiguous from offset 0.
    let value = if value.is_contiguous() && value.layout().start_offset() == 0 {
        value
    } else {
        value.affine(1.0, 0.0)?
    };
    arg.apply_op1(Graft {
        name,
        value,
        backward: Box::new(backward),
    })
}

struct Graft {
    name: &'static str,
    value: Tensor,
    backward: Box<Backward>,
}

impl CustomOp1 for Graft {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: value and input on different devices", self.name),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let (storage, layout) = self.value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: value and input on different devices", self.name),
        }
    }

    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        let (storage, layout) = self.value.storage_and_layout();
        match &*storage {
            Storage::Metal(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: value and input on different devices", self.name),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.backward)(arg, res, grad)?))
    }
}
