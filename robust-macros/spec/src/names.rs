//! The name lists: every name a key accepts, declared once. The runtime's `from_name` functions
//! and the attribute's checks read these lists, so adding an attack is one name here plus its
//! file under `robust-runtime/src/attack/`.

/// `attack = "…"`: the attacks the runtime implements.
pub const ATTACKS: &[&str] = &[
    "fgsm",
    "pgd",
    "apgd",
    "apgd-t",
    "autoattack",
    "square",
    "cw",
    "deepfool",
    "fab",
    "fab-t",
];

/// `version = "…"` of `autoattack`: AutoAttack's standard cascade, its version for
/// randomized defences, or the cascade of the members listed in `attacks`.
pub const AUTOATTACK_VERSIONS: &[&str] = &["standard", "rand", "custom"];

/// `attacks = […]` of `autoattack` with `version = "custom"`: AutoAttack's members, by the
/// names of the reference code (`attacks_to_run`).
pub const AUTOATTACK_MEMBERS: &[&str] =
    &["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"];

/// The attacks that exist for one norm only, with that norm: `norm = "linf"` beside them is a
/// mistake the attribute reports at compile time.
pub const ONE_NORM_ATTACKS: &[(&str, &str, &str)] = &[(
    "cw",
    "l2",
    "Carlini & Wagner's attack minimises an L2 distance",
)];

/// Smoothing's default sample sizes (Cohen et al. 2019): `n0` noisy copies choose the class,
/// `n` estimate its probability. The attribute checks `n0 ≤ n` against these when one of them
/// is not written; the runtime's `Smoothing::new` uses them.
pub const SMOOTHING_N0: usize = 100;
/// See [`SMOOTHING_N0`].
pub const SMOOTHING_N: usize = 100_000;

/// `certify = "…"`: bound propagation at L∞ `eps` (`ibp`, `crown`), optimised bounds and complete
/// verification at L∞ `eps` (`alpha-crown`, `bab`), or randomized smoothing at L2 `radius`.
pub const CERTIFIERS: &[&str] = &["ibp", "crown", "alpha-crown", "bab", "smoothing"];

/// The certifiers that bound the network over an L∞ ball (`robust_runtime::certify::Method`).
pub const BOUND_CERTIFIERS: &[&str] = &["ibp", "crown"];

/// The certifiers of `robust_runtime::verify`: α-CROWN alone, and branch and bound on it
/// (`timeout` per sample).
pub const VERIFIERS: &[&str] = &["alpha-crown", "bab"];

/// `bab`'s budget per sample, in seconds, when `timeout` is not written.
pub const BAB_TIMEOUT: f64 = 10.0;

/// `perturbation = "…"`: the perturbation families; `"rotation+brightness"` composes several.
pub const PERTURBATIONS: &[&str] = &[
    "linf",
    "l2",
    "gaussian",
    "salt_pepper",
    "brightness",
    "contrast",
    "shift",
    "rotation",
    "occlusion",
];

/// `norm = "…"`: the norms of the ε-ball.
pub const NORMS: &[&str] = &["linf", "l2"];

/// `loss = "…"`: cross-entropy, Carlini–Wagner margin, difference of logits ratio.
pub const LOSSES: &[&str] = &["ce", "cw", "dlr"];

/// `device = "…"`.
pub const DEVICES: &[&str] = &["cpu", "cuda", "auto"];

/// `precision = "…"`: the arithmetic of f32 matrix products on CUDA: strict IEEE f32, or
/// TF32 tensor cores (inputs rounded to 10 mantissa bits, f32 accumulation), as PyTorch's
/// `allow_tf32`. Certification is always f32: a bound computed in TF32 may not hold for the
/// model.
pub const PRECISIONS: &[&str] = &["f32", "tf32"];

/// `masking_checks = "…"`: what gradient-masking symptoms do.
pub const MASKING: &[&str] = &["fail", "warn", "off"];

/// The perturbation families whose radius `eps` is.
pub const EPS_FAMILIES: &[&str] = &["linf", "l2"];

/// Every list with the word its messages use for one of its names, for tests and docs.
pub const ALL: &[(&str, &[&str])] = &[
    ("attack", ATTACKS),
    ("certifier", CERTIFIERS),
    ("perturbation", PERTURBATIONS),
    ("norm", NORMS),
    ("loss", LOSSES),
    ("device", DEVICES),
    ("precision", PRECISIONS),
    ("masking_checks", MASKING),
    ("version", AUTOATTACK_VERSIONS),
    ("AutoAttack member", AUTOATTACK_MEMBERS),
];
