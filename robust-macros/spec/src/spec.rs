//! A robustness test as its writer describes it, whichever the front end: the lists that shape
//! the tests, the options, and the tests they generate with their names.

use crate::keys::{Options, Scope};

/// The kinds of test, chosen by the key that names what to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `attack = …` with `eps = …`: one test per attack × ε, asserting robust accuracy.
    Attack,
    /// `certify = …`: one test per certifier × ε (IBP, CROWN) or × radius (smoothing).
    Certify,
    /// `perturbation = …`: one test per perturbation, asserting invariance.
    Perturbation,
}

/// A radius (`eps`, `radius`) with the digits it was written with: tests are named after them,
/// so that `pgd_eps_8e_3` reads like the `eps = 8e-3` that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Radius {
    /// Its value.
    pub value: f64,
    /// The digits as written, without sign, suffix or underscores (`0.05`, `8e-3`).
    pub digits: String,
}

impl Radius {
    /// A radius set from Rust: its digits are how Rust prints it.
    pub fn from_value(value: f64) -> Radius {
        Radius {
            value,
            digits: value.to_string(),
        }
    }

    /// The part of a test name it makes: `0.05` → `0_05`, `8e-3` → `8e_3`.
    pub fn name_part(&self) -> String {
        identifier_chars(&self.digits)
    }
}

/// `perturbation = "rotation+brightness"`: known families joined by `+`.
#[derive(Debug, Clone, PartialEq)]
pub struct Composition {
    /// The families, in the order written, joined by `+`.
    pub name: String,
    /// Each family.
    pub families: Vec<&'static str>,
}

/// A whole test description: what `#[robustness_test(...)]` or one suite `[[test]]` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// What the generated tests do.
    pub kind: Kind,
    /// `attack = …`: at least one known attack, none repeated.
    pub attacks: Vec<&'static str>,
    /// `certify = …`.
    pub certifiers: Vec<&'static str>,
    /// `perturbation = …`.
    pub perturbations: Vec<Composition>,
    /// `eps = …`: attack radii, IBP/CROWN radii, or the one radius of `linf`/`l2` noise.
    pub eps: Vec<Radius>,
    /// `radius = …`: smoothing's L2 radii.
    pub radius: Vec<Radius>,
    /// `crate = "…"`, for the attribute.
    pub krate: Option<String>,
    /// Everything else.
    pub options: Options,
}

/// One generated test.
#[derive(Debug, Clone, PartialEq)]
pub struct Case<'a> {
    /// The test function's name, e.g. `pgd_eps_0_1` or `rotation`.
    pub name: String,
    /// What it runs.
    pub test: CaseKind<'a>,
}

/// What one generated test runs.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseKind<'a> {
    /// An attack at one ε.
    Attack {
        /// The attack.
        attack: &'static str,
        /// Its ε.
        eps: &'a Radius,
    },
    /// A certifier at one radius.
    Certify {
        /// The certifier.
        certifier: &'static str,
        /// Its radius (`eps` or `radius`).
        radius: &'a Radius,
        /// Every radius of this certifier (smoothing reads them all off one run).
        all: &'a [Radius],
    },
    /// One perturbation.
    Perturbation {
        /// The perturbation.
        perturbation: &'a Composition,
    },
}

impl Spec {
    /// An empty description of a test of `kind`.
    pub fn new(kind: Kind) -> Spec {
        Spec {
            kind,
            attacks: Vec::new(),
            certifiers: Vec::new(),
            perturbations: Vec::new(),
            eps: Vec::new(),
            radius: Vec::new(),
            krate: None,
            options: Options::default(),
        }
    }

    /// The options one test reads: a perturbation test of a list leaves out the parameters
    /// of the list's other families (`max_degrees` in the `shift` test of
    /// `perturbation = ["rotation", "shift"]`), which the attribute accepts for the list.
    pub fn options_for(&self, case: &Case<'_>) -> Options {
        let mut options = self.options;
        if let CaseKind::Perturbation { perturbation } = &case.test {
            for (key, _) in self.options.written() {
                if !reads(key, &perturbation.families) {
                    options.clear(key);
                }
            }
        }
        options
    }

    /// The radius of one perturbation test: `eps`, where its families read it.
    pub fn eps_for(&self, case: &Case<'_>) -> Option<&Radius> {
        match &case.test {
            CaseKind::Perturbation { perturbation } if reads("eps", &perturbation.families) => {
                self.eps.first()
            }
            _ => None,
        }
    }

    /// Every test: attack × ε, attack-major, so tests sort by attack in `cargo test` output;
    /// certifier × radius; or one per perturbation.
    pub fn cases(&self) -> Vec<Case<'_>> {
        match self.kind {
            Kind::Attack => self
                .attacks
                .iter()
                .flat_map(|&attack| {
                    self.eps.iter().map(move |eps| Case {
                        name: format!("{}_eps_{}", identifier_chars(attack), eps.name_part()),
                        test: CaseKind::Attack { attack, eps },
                    })
                })
                .collect(),
            Kind::Certify => self
                .certifiers
                .iter()
                .flat_map(|&certifier| {
                    let (key, list) = if certifier == "smoothing" {
                        ("radius", &self.radius)
                    } else {
                        ("eps", &self.eps)
                    };
                    list.iter().map(move |r| Case {
                        name: format!("{}_{key}_{}", identifier_chars(certifier), r.name_part()),
                        test: CaseKind::Certify {
                            certifier,
                            radius: r,
                            all: list,
                        },
                    })
                })
                .collect(),
            Kind::Perturbation => self
                .perturbations
                .iter()
                .map(|perturbation| Case {
                    name: identifier_chars(&perturbation.name),
                    test: CaseKind::Perturbation { perturbation },
                })
                .collect(),
        }
    }
}

/// Whether a perturbation test drawing from `families` reads `key`.
fn reads(key: &str, families: &[&str]) -> bool {
    let Some(k) = crate::keys::key(key) else {
        return false;
    };
    k.scopes.iter().any(|scope| match scope {
        Scope::Any | Scope::Perturbation => true,
        Scope::Family(readers) => families.iter().any(|f| readers.contains(f)),
        _ => false,
    })
}

/// Lower-cases `text` and turns everything that cannot appear in an identifier into `_`.
pub fn identifier_chars(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}
