//! The training loop shared by every regime.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use crate::certify::{self, ibp};
use crate::nn::{Sequential, SequentialBuilder};
use crate::{Dataset, Error, InputDomain, Result, Rng};

/// What the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regime {
    /// Clean inputs.
    Standard,
    /// Inputs plus Gaussian noise of standard deviation `sigma` (input units, not clamped).
    GaussianNoise {
        /// Noise level; train at the σ the model will be smoothed with.
        sigma: f64,
    },
    /// Interval bound propagation training at radius `eps` (L∞, clipped to the input domain).
    Ibp {
        /// Final training radius (usually larger than the radius to certify).
        eps: f64,
        /// Epochs of clean training before ε starts growing.
        warmup_epochs: usize,
        /// Epochs over which ε grows linearly from 0 to `eps` (and κ from 1 to `kappa`).
        ramp_epochs: usize,
        /// Final weight of the clean loss.
        kappa: f64,
    },
}

/// Hyper-parameters of [`train`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Seed of initialisation, batch order and noise.
    pub seed: u64,
    /// The loss.
    pub regime: Regime,
}

impl TrainConfig {
    /// Rejects values no training run can use.
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::param("epochs", self.epochs, "at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::param("batch_size", self.batch_size, "at least 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::param(
                "learning_rate",
                self.learning_rate,
                "a finite learning rate > 0",
            ));
        }
        match self.regime {
            Regime::Standard => {}
            Regime::GaussianNoise { sigma } if !(sigma.is_finite() && sigma > 0.0) => {
                return Err(Error::param("sigma", sigma, "a finite noise level > 0"));
            }
            Regime::GaussianNoise { .. } => {}
            Regime::Ibp { eps, kappa, .. } => {
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(Error::param("eps", eps, "a finite radius > 0"));
                }
                if !(0.0..=1.0).contains(&kappa) {
                    return Err(Error::param("kappa", kappa, "a weight in [0, 1]"));
                }
            }
        }
        Ok(())
    }
}

/// What one epoch did, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training radius this epoch ended at (IBP), else 0.
    pub eps: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// Trains the network `layers` describes on `data` and returns its parameters (save them with
/// `VarMap::save`, load them with `SequentialBuilder::load`) and the network. `on_epoch` is
/// called after each epoch.
pub fn train(
    layers: SequentialBuilder,
    data: &Dataset,
    domain: InputDomain,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&Sequential, EpochStats) -> Result<()>,
) -> Result<(VarMap, Sequential)> {
    config.check()?;
    if data.is_empty() {
        return Err(Error::Data("no training samples".into()));
    }
    let device = Device::Cpu;
    let mut rng = Rng::seed_from_u64(config.seed);
    let varmap = VarMap::new();
    let net = layers.build(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    init_like_pytorch(&varmap, &mut rng)?;
    let params = ParamsAdamW {
        lr: config.learning_rate,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let steps_per_epoch = data.len().div_ceil(config.batch_size);
    let started = std::time::Instant::now();
    let mut step = 0usize;
    let mut eps_now = 0.0;
    for epoch in 1..=config.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        rng.shuffle(&mut order);
        let shuffled = data.select(&order)?;
        let mut total = 0.0;
        for batch in shuffled.batches(config.batch_size, &device) {
            let batch = batch?;
            let x = batch.inputs.to_dtype(DType::F32)?;
            let labels = &shuffled.labels()[batch.range.clone()];
            let loss = match config.regime {
                Regime::Standard => ce(&net.forward(&x)?, &batch.labels)?,
                Regime::GaussianNoise { sigma } => {
                    let noise = rng.normal_vec(x.elem_count());
                    let noise = (Tensor::from_vec(noise, x.shape(), &device)? * sigma)?;
                    ce(&net.forward(&(x + noise)?)?, &batch.labels)?
                }
                Regime::Ibp {
                    eps,
                    warmup_epochs,
                    ramp_epochs,
                    kappa,
                } => {
                    let warmup = warmup_epochs * steps_per_epoch;
                    let ramp = (ramp_epochs * steps_per_epoch).max(1);
                    let t = (step.saturating_sub(warmup) as f64 / ramp as f64).min(1.0);
                    eps_now = eps * t;
                    let k = 1.0 - t * (1.0 - kappa);
                    let clean = ce(&net.forward(&x)?, &batch.labels)?;
                    if eps_now > 0.0 {
                        let (l, u) = certify::input_box(&x, eps_now, domain)?;
                        let worst = ibp::worst_case_logits(&net, &l, &u, labels)?;
                        ((clean * k)? + (ce(&worst, &batch.labels)? * (1.0 - k))?)?
                    } else {
                        clean
                    }
                }
            };
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? as f64 * batch.range.len() as f64;
            step += 1;
        }
        let loss = total / data.len() as f64;
        if !loss.is_finite() {
            return Err(Error::param(
                "learning_rate",
                config.learning_rate,
                format!("a rate at which training converges (epoch {epoch} has loss {loss})"),
            ));
        }
        on_epoch(
            &net,
            EpochStats {
                epoch,
                loss,
                eps: eps_now,
                seconds: started.elapsed().as_secs_f64(),
            },
        )?;
    }
    Ok((varmap, net))
}

fn ce(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(candle_nn::loss::nll(&log_probs, labels)?)
}

/// PyTorch's default initialisation of `nn.Linear` and `nn.Conv2d`: weights and biases uniform in
/// ±1/√fan_in, drawn from `rng` in name order (candle cannot seed its own RNG).
pub fn init_like_pytorch(varmap: &VarMap, rng: &mut Rng) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::ModelConfig("var map lock poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let weight_name = name.replace(".bias", ".weight");
        let Some(weight) = vars.get(&weight_name) else {
            continue;
        };
        let fan_in: usize = weight.dims()[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let values = rng.uniform_vec(var.elem_count(), -bound, bound);
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}
