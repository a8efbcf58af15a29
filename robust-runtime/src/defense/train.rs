//! The training loop shared by every regime.

use std::path::Path;

use candle_core::{DType, Module, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use crate::attack::{
    check_positive_as, kernel, Attack, AttackBatch, Norm, Pgd, PgdConfig, ThreatModel,
};
use crate::certify::{self, ibp};
use crate::device::DeviceChoice;
use crate::nn::{Sequential, SequentialBuilder};
use crate::{Dataset, Error, InputDomain, Model, Result, Rng};

/// What the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
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
    /// PGD adversarial training (Madry et al. 2018): cross-entropy on the L∞ PGD example of
    /// each batch, found against the current weights (random start, `steps` steps of
    /// `step_size`, default 2.5·ε/steps).
    Pgd {
        /// Training radius (L∞, input units).
        eps: f64,
        /// PGD iterations per batch.
        steps: usize,
        /// Step α; `None`: 2.5·ε/steps.
        step_size: Option<f64>,
    },
    /// TRADES (Zhang et al. 2019): `CE(f(x), y) + β·KL(f(x) ‖ f(x'))`, with `x'` maximising the
    /// KL term in the L∞ ε-ball (start `x + 0.001·N(0, 1)`, `steps` sign-gradient steps of
    /// `step_size`, default 2.5·ε/steps).
    Trades {
        /// Training radius (L∞, input units).
        eps: f64,
        /// Inner maximisation steps per batch.
        steps: usize,
        /// Step α; `None`: 2.5·ε/steps.
        step_size: Option<f64>,
        /// Weight β of the robustness term (the paper uses 1 to 6).
        beta: f64,
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
    /// Where to train: [`DeviceChoice::Cpu`], or CUDA (needs the `cuda` feature). Noise,
    /// shuffling and attack starts come from the host's seeded RNG on every device; a
    /// checkpoint written on one device resumes on another.
    pub device: DeviceChoice,
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
            Regime::GaussianNoise { sigma } => {
                check_positive_as("sigma", sigma, "a finite noise level > 0")?;
            }
            Regime::Pgd {
                eps,
                steps,
                step_size,
            }
            | Regime::Trades {
                eps,
                steps,
                step_size,
                ..
            } => {
                check_positive_as("eps", eps, "a finite radius > 0")?;
                if steps == 0 {
                    return Err(Error::param("steps", steps, "at least 1"));
                }
                if let Some(a) = step_size {
                    check_positive_as("step_size", a, "a finite step > 0")?;
                }
                if let Regime::Trades { beta, .. } = self.regime {
                    if !(beta.is_finite() && beta >= 0.0) {
                        return Err(Error::param("beta", beta, "a finite weight ≥ 0"));
                    }
                }
            }
            Regime::Ibp { eps, kappa, .. } => {
                check_positive_as("eps", eps, "a finite radius > 0")?;
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
    on_epoch: impl FnMut(&Sequential, EpochStats) -> Result<()>,
) -> Result<(VarMap, Sequential)> {
    train_resumable(layers, data, domain, config, None, on_epoch)
}

/// What a checkpoint folder holds besides the weights (`weights.safetensors`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointState {
    /// Epochs completed.
    epoch: usize,
    /// Optimiser steps taken.
    step: usize,
    /// The configuration that produced it, as text: a checkpoint of another run is refused.
    config: String,
    /// The RNG right after the last completed epoch.
    rng: crate::rng::RngState,
}

/// [`train`] that writes a checkpoint into `checkpoint` after every epoch (`weights.safetensors`
/// and `state.json`) and, when one is there, resumes after its last completed epoch with the
/// same weights, step count and RNG position, so batch order, noise and attack starts continue
/// where they stopped. AdamW's moment estimates are not in the checkpoint (candle keeps them
/// private), so they restart at the resumed epoch: a resumed run is close to, not bit-identical
/// with, an uninterrupted one. A checkpoint written with another configuration is an error.
pub fn train_resumable(
    layers: SequentialBuilder,
    data: &Dataset,
    domain: InputDomain,
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    mut on_epoch: impl FnMut(&Sequential, EpochStats) -> Result<()>,
) -> Result<(VarMap, Sequential)> {
    config.check()?;
    if data.is_empty() {
        return Err(Error::Data("no training samples".into()));
    }
    let device = crate::device::select_exactly(config.device)?;
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
    let mut completed = 0usize;
    // The device is left out: a checkpoint resumes wherever the run continues.
    let on_cpu = TrainConfig {
        device: DeviceChoice::Cpu,
        ..*config
    };
    let described = format!("{on_cpu:?}, {} samples", data.len());
    if let Some(dir) = checkpoint {
        let state_path = dir.join("state.json");
        if state_path.exists() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
            let state: CheckpointState = serde_json::from_str(&text)
                .map_err(|e| Error::format("checkpoint", &state_path, e.to_string()))?;
            if state.config != described {
                return Err(Error::format(
                    "checkpoint",
                    &state_path,
                    format!(
                        "it was written by `{}`; expected `{described}` (use another folder or \
                         delete it)",
                        state.config
                    ),
                ));
            }
            let mut vm = varmap.clone();
            vm.load(dir.join("weights.safetensors"))?;
            rng = Rng::from_state(&state.rng).ok_or_else(|| {
                Error::format("checkpoint", &state_path, "an unreadable RNG state")
            })?;
            // Every epoch takes the same number of steps, so both counts are known for a
            // checkpoint that this configuration wrote; anything else was edited or corrupted.
            if state.epoch > config.epochs {
                return Err(Error::format(
                    "checkpoint",
                    &state_path,
                    format!(
                        "epoch {} completed; expected at most the {} epochs of this run",
                        state.epoch, config.epochs
                    ),
                ));
            }
            let expected_step = state.epoch.checked_mul(steps_per_epoch);
            if expected_step != Some(state.step) {
                return Err(Error::format(
                    "checkpoint",
                    &state_path,
                    format!(
                        "step {} after epoch {}; expected {} ({steps_per_epoch} steps per epoch)",
                        state.step,
                        state.epoch,
                        expected_step.map_or("an overflow".to_string(), |s| s.to_string())
                    ),
                ));
            }
            crate::data::check_finite_weights("checkpoint", &dir.join("weights.safetensors"))?;
            completed = state.epoch;
            step = state.step;
        }
    }
    // `completed < epochs` within the loop, so `e + 1` cannot overflow.
    for epoch in (completed..config.epochs).map(|e| e + 1) {
        let mut progress = crate::progress::Progress::new(
            &format!("training epoch {epoch}/{}", config.epochs),
            data.len(),
        );
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
                Regime::Pgd {
                    eps,
                    steps,
                    step_size,
                } => {
                    let adv = pgd_examples(
                        &net,
                        &x,
                        &batch.labels,
                        domain,
                        eps,
                        steps,
                        step_size,
                        &mut rng,
                    )?;
                    ce(&net.forward(&adv)?, &batch.labels)?
                }
                Regime::Trades {
                    eps,
                    steps,
                    step_size,
                    beta,
                } => {
                    let logits = net.forward(&x)?;
                    let adv = trades_examples(&net, &x, domain, eps, steps, step_size, &mut rng)?;
                    let robust = kl_clean_to_adv(&logits, &net.forward(&adv)?)?;
                    (ce(&logits, &batch.labels)? + (robust * beta)?)?
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
            progress.advance(batch.range.len());
        }
        progress.finish();
        let loss = total / data.len() as f64;
        if !loss.is_finite() {
            return Err(Error::param(
                "learning_rate",
                config.learning_rate,
                format!("a rate at which training converges (epoch {epoch} has loss {loss})"),
            ));
        }
        if let Some(dir) = checkpoint {
            save_checkpoint(
                dir,
                &varmap,
                &CheckpointState {
                    epoch,
                    step,
                    config: described.clone(),
                    rng: rng.state(),
                },
            )?;
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

/// Writes the weights and the state, each to a temporary file renamed into place, so an
/// interruption leaves the previous checkpoint whole.
fn save_checkpoint(dir: &Path, varmap: &VarMap, state: &CheckpointState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights = dir.join("weights.safetensors");
    let tmp = dir.join("weights.safetensors.tmp");
    varmap.save(&tmp)?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    let path = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::format("checkpoint", &path, e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// The L∞ PGD examples of a batch against the current weights (detached: the attack computes
/// input gradients only).
#[allow(clippy::too_many_arguments)]
fn pgd_examples(
    net: &Sequential,
    x: &Tensor,
    labels: &Tensor,
    domain: InputDomain,
    eps: f64,
    steps: usize,
    step_size: Option<f64>,
    rng: &mut Rng,
) -> Result<Tensor> {
    let frozen = Model::new(net.detach()).with_domain(domain);
    let classes = net.output_shape().last().copied().unwrap_or(1);
    let pgd = Pgd::new(PgdConfig {
        eps,
        steps,
        step_size,
        ..PgdConfig::default()
    })?;
    let batch = AttackBatch::untargeted(x, labels, classes);
    Ok(pgd.perturb(&frozen, &batch, rng)?.detach())
}

/// TRADES' inner maximisation: sign-gradient ascent on `KL(f(x) ‖ f(x'))` from
/// `x + 0.001·N(0, 1)`, projected onto the L∞ ε-ball and the domain after every step.
fn trades_examples(
    net: &Sequential,
    x: &Tensor,
    domain: InputDomain,
    eps: f64,
    steps: usize,
    step_size: Option<f64>,
    rng: &mut Rng,
) -> Result<Tensor> {
    let frozen = net.detach();
    let threat = ThreatModel {
        norm: Norm::Linf,
        eps,
    };
    let alpha = step_size.unwrap_or(2.5 * eps / steps as f64);
    let clean = frozen.forward(x)?.detach();
    let noise = Tensor::from_vec(rng.normal_vec(x.elem_count()), x.shape(), x.device())?;
    let mut adv = kernel::project(&(x + (noise * 0.001)?)?, x, &threat, domain)?;
    for _ in 0..steps {
        let var = Var::from_tensor(&adv)?;
        let kl = kl_clean_to_adv(&clean, &frozen.forward(var.as_tensor())?)?;
        let grads = kl.backward()?;
        let grad = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => adv.zeros_like()?,
        };
        adv = kernel::project(
            &kernel::ascend(&adv, &grad, Norm::Linf, alpha)?,
            x,
            &threat,
            domain,
        )?;
    }
    Ok(adv.detach())
}

/// `KL(softmax(clean) ‖ softmax(adv))`, averaged over the batch (PyTorch's
/// `KLDivLoss(reduction="batchmean")` on `log_softmax(adv)` and `softmax(clean)`, as TRADES).
fn kl_clean_to_adv(clean: &Tensor, adv: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(clean, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(adv, D::Minus1)?;
    let n = clean.dim(0)? as f64;
    Ok(((log_p.exp()? * (log_p - log_q)?)?.sum_all()? / n)?)
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
