//! VNN-LIB properties, the subset VNN-COMP's benchmarks use: an input box and a violation
//! region of the outputs.
//!
//! A `.vnnlib` file declares the inputs `X_0 … X_{n−1}` and outputs `Y_0 … Y_{m−1}` (`(declare-const
//! X_0 Real)`) and asserts what a *counterexample* satisfies: each input between bounds, and the
//! outputs in an unsafe region. The network is verified when no point of the box reaches the
//! region (the assertions are unsatisfiable: VNN-COMP's `unsat`), falsified by a point that does
//! (`sat`).
//!
//! Read here:
//! - input bounds `(assert (<= X_i c))` and `(assert (>= X_i c))` (either side may be the
//!   constant), one lower and one upper bound per input, at the top level;
//! - output constraints: comparisons `<=`, `>=` of linear terms over the `Y_j` (`+`, `-`, `*` by
//!   a constant, numbers), at the top level (all must hold) and in one `(or (and …) …)` of
//!   conjunctions (one of them must hold).
//!
//! Anything else (input constraints inside a disjunction, products of variables, an input
//! without both bounds) is an [`Error::Format`] naming the line and what is supported.
//!
//! ```
//! let text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n\
//!             (assert (>= X_0 0.25))\n(assert (<= X_0 0.75))\n\
//!             (assert (or (and (>= Y_1 Y_0))))";
//! let p = robust_runtime::vnnlib::Property::parse(text, "<memory>")?;
//! assert_eq!((p.lower.as_slice(), p.upper.as_slice()), (&[0.25][..], &[0.75][..]));
//! // Violated where Y_1 − Y_0 ≥ 0.
//! assert!(p.violated(&[0.0, 1.0]));
//! assert!(!p.violated(&[1.0, 0.0]));
//! # Ok::<(), robust_runtime::Error>(())
//! ```

use std::path::Path;

use crate::{Error, Result};

/// A property: the input box, and the region of the outputs a counterexample reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// Per input `X_i`, its lower bound.
    pub lower: Vec<f64>,
    /// Per input `X_i`, its upper bound.
    pub upper: Vec<f64>,
    /// Outputs `Y_j`.
    pub outputs: usize,
    /// The unsafe region: a disjunction of conjunctions of constraints (a counterexample meets
    /// every constraint of one of them).
    pub violation: Vec<Vec<Constraint>>,
}

/// `Σ_j coefficients[j]·Y_j + constant ≥ 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// Per output `Y_j`, its coefficient.
    pub coefficients: Vec<f64>,
    /// The constant term.
    pub constant: f64,
}

impl Constraint {
    /// `Σ_j c_j·y_j + constant`, which is `≥ 0` where the constraint holds.
    pub fn value(&self, y: &[f64]) -> f64 {
        (self.coefficients.iter().zip(y))
            .map(|(c, y)| c * y)
            .sum::<f64>()
            + self.constant
    }
}

impl Property {
    /// Reads a `.vnnlib` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Property> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Property::parse(&text, path)
    }

    /// Parses the text of a `.vnnlib` file; `source` names it in errors.
    pub fn parse(text: &str, source: impl AsRef<Path>) -> Result<Property> {
        let source = source.as_ref();
        let fail = |line: usize, reason: String| {
            Error::format("VNN-LIB", source, format!("line {line}: {reason}"))
        };
        let whole = |reason: String| Error::format("VNN-LIB", source, reason);
        let exprs = parse_exprs(text).map_err(|(line, reason)| fail(line, reason))?;
        let (mut inputs, mut outputs) = (0usize, 0usize);
        let mut asserts = Vec::new();
        for expr in &exprs {
            let line = expr.line;
            let items = expr.list().ok_or_else(|| {
                fail(
                    line,
                    "a bare atom at the top level; expected `(declare-const …)` or `(assert …)`"
                        .into(),
                )
            })?;
            match items.first().and_then(Expr::atom) {
                Some("declare-const") => {
                    let (Some(name), Some("Real")) = (
                        items.get(1).and_then(Expr::atom),
                        items.get(2).and_then(Expr::atom),
                    ) else {
                        return Err(fail(line, "expected `(declare-const NAME Real)`".into()));
                    };
                    match variable(name) {
                        Some(Var::X(i)) if i == inputs => inputs += 1,
                        Some(Var::Y(j)) if j == outputs => outputs += 1,
                        _ => {
                            return Err(fail(
                                line,
                                format!(
                                    "declares `{name}`; expected X_{inputs} or Y_{outputs} (inputs \
                                     and outputs declared in order from 0)"
                                ),
                            ))
                        }
                    }
                }
                Some("assert") if items.len() == 2 => asserts.push(&items[1]),
                _ => {
                    return Err(fail(
                        line,
                        "expected `(declare-const NAME Real)` or `(assert FORMULA)`".into(),
                    ))
                }
            }
        }
        let mut lower = vec![f64::NAN; inputs];
        let mut upper = vec![f64::NAN; inputs];
        let mut always = Vec::new();
        let mut disjunction: Option<Vec<Vec<Constraint>>> = None;
        let shape = Shape { inputs, outputs };
        for a in asserts {
            let line = a.line;
            let head = a.list().and_then(|l| l.first()).and_then(Expr::atom);
            if head == Some("or") {
                if disjunction.is_some() {
                    return Err(fail(line, "a second `or`; expected at most one".into()));
                }
                let mut terms = Vec::new();
                for term in &a.list().expect("a list")[1..] {
                    let parts = match term.list() {
                        Some(l) if l.first().and_then(Expr::atom) == Some("and") => &l[1..],
                        _ => std::slice::from_ref(term),
                    };
                    let conj = parts
                        .iter()
                        .map(|c| match shape.comparison(c)? {
                            Compared::Outputs(c) => Ok(c),
                            Compared::Input { .. } => Err((
                                c.line,
                                "an input bound inside `or`; expected input bounds at the top \
                                 level (one box)"
                                    .to_string(),
                            )),
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|(l, r)| fail(l, r))?;
                    terms.push(conj);
                }
                disjunction = Some(terms);
                continue;
            }
            let parts = match a.list() {
                Some(l) if head == Some("and") => &l[1..],
                _ => std::slice::from_ref(a),
            };
            for c in parts {
                match shape.comparison(c).map_err(|(l, r)| fail(l, r))? {
                    Compared::Input {
                        index,
                        bound,
                        upper: is_upper,
                    } => {
                        let slot = if is_upper {
                            &mut upper[index]
                        } else {
                            &mut lower[index]
                        };
                        if !slot.is_nan() {
                            return Err(fail(c.line, format!("a second bound on X_{index}")));
                        }
                        *slot = bound;
                    }
                    Compared::Outputs(c) => always.push(c),
                }
            }
        }
        for i in 0..inputs {
            if lower[i].is_nan() || upper[i].is_nan() {
                return Err(whole(format!(
                    "X_{i} lacks a lower or an upper bound; expected both"
                )));
            }
            if lower[i] > upper[i] {
                return Err(whole(format!(
                    "X_{i} has lower bound {} above its upper bound {}",
                    lower[i], upper[i]
                )));
            }
        }
        let mut violation = disjunction.unwrap_or_else(|| vec![Vec::new()]);
        for conj in &mut violation {
            conj.extend(always.iter().cloned());
        }
        if violation.iter().all(Vec::is_empty) {
            return Err(whole(
                "no output constraint; expected the unsafe region of the outputs".into(),
            ));
        }
        Ok(Property {
            lower,
            upper,
            outputs,
            violation,
        })
    }

    /// "Some class other than `label` reaches `label`'s logit somewhere in the L∞ ball of
    /// radius `eps` around `x`, clipped to `[lo, hi]`": the robustness property VNN-COMP's MNIST
    /// benchmarks write, as one disjunct `Y_j − Y_label ≥ 0` per other class.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `eps` that is not finite and ≥ 0, or `label ≥ classes`.
    pub fn misclassified(
        x: &[f64],
        eps: f64,
        (lo, hi): (f64, f64),
        label: usize,
        classes: usize,
    ) -> Result<Property> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::param("eps", eps, "a finite radius ≥ 0"));
        }
        if label >= classes {
            return Err(Error::param(
                "label",
                label,
                format!("a class below {classes}"),
            ));
        }
        let violation = (0..classes)
            .filter(|&j| j != label)
            .map(|j| {
                let mut coefficients = vec![0.0; classes];
                (coefficients[j], coefficients[label]) = (1.0, -1.0);
                vec![Constraint {
                    coefficients,
                    constant: 0.0,
                }]
            })
            .collect();
        Ok(Property {
            lower: x.iter().map(|&v| (v - eps).max(lo)).collect(),
            upper: x.iter().map(|&v| (v + eps).min(hi)).collect(),
            outputs: classes,
            violation,
        })
    }

    /// Whether outputs `y` lie in the unsafe region (a counterexample's outputs do).
    pub fn violated(&self, y: &[f64]) -> bool {
        (self.violation.iter()).any(|conj| conj.iter().all(|c| c.value(y) >= 0.0))
    }

    /// Whether `x` lies in the input box.
    pub fn contains(&self, x: &[f64]) -> bool {
        x.len() == self.lower.len()
            && (x.iter().zip(self.lower.iter().zip(&self.upper)))
                .all(|(v, (l, u))| l <= v && v <= u)
    }
}

/// An s-expression, with the line it starts on.
#[derive(Debug)]
struct Expr {
    line: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Atom(String),
    List(Vec<Expr>),
}

impl Expr {
    fn atom(&self) -> Option<&str> {
        match &self.kind {
            Kind::Atom(a) => Some(a),
            Kind::List(_) => None,
        }
    }

    fn list(&self) -> Option<&[Expr]> {
        match &self.kind {
            Kind::List(l) => Some(l),
            Kind::Atom(_) => None,
        }
    }
}

/// The top-level expressions of `text` (comments `;` to the end of the line skipped), or the
/// line of an unbalanced parenthesis.
fn parse_exprs(text: &str) -> std::result::Result<Vec<Expr>, (usize, String)> {
    let mut stack: Vec<(usize, Vec<Expr>)> = vec![(1, Vec::new())];
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let code = line.split(';').next().unwrap_or("");
        let spaced = code.replace('(', " ( ").replace(')', " ) ");
        for token in spaced.split_whitespace() {
            match token {
                "(" => stack.push((line_no, Vec::new())),
                ")" => {
                    if stack.len() == 1 {
                        return Err((line_no, "a `)` that closes nothing".into()));
                    }
                    let (start, items) = stack.pop().expect("an open list");
                    stack.last_mut().expect("the top level").1.push(Expr {
                        line: start,
                        kind: Kind::List(items),
                    });
                }
                atom => stack.last_mut().expect("a list").1.push(Expr {
                    line: line_no,
                    kind: Kind::Atom(atom.to_string()),
                }),
            }
        }
    }
    if stack.len() > 1 {
        let (start, _) = stack.last().expect("an open list");
        return Err((*start, "a `(` that is never closed".into()));
    }
    Ok(stack.pop().expect("the top level").1)
}

enum Var {
    X(usize),
    Y(usize),
}

fn variable(name: &str) -> Option<Var> {
    let (kind, index) = name.split_once('_')?;
    let index: usize = index.parse().ok()?;
    match kind {
        "X" => Some(Var::X(index)),
        "Y" => Some(Var::Y(index)),
        _ => None,
    }
}

/// What one comparison says.
enum Compared {
    /// A bound on one input: `X_index ≤ bound` (`upper`) or `≥ bound`.
    Input {
        index: usize,
        bound: f64,
        upper: bool,
    },
    /// A linear constraint on the outputs.
    Outputs(Constraint),
}

/// The declared variables.
struct Shape {
    inputs: usize,
    outputs: usize,
}

/// A linear term over the outputs: coefficients, constant.
type Linear = (Vec<f64>, f64);

impl Shape {
    fn comparison(&self, e: &Expr) -> std::result::Result<Compared, (usize, String)> {
        let line = e.line;
        let items = e.list().unwrap_or(&[]);
        let op = items.first().and_then(Expr::atom);
        let (Some(op @ ("<=" | ">=")), 3) = (op, items.len()) else {
            return Err((
                line,
                "expected a comparison `(<= A B)` or `(>= A B)` (or `and`/`or` of them)".into(),
            ));
        };
        let (a, b) = (&items[1], &items[2]);
        // An input bound: one side an input, the other a number.
        let input = |e: &Expr| match e.atom().and_then(variable) {
            Some(Var::X(i)) => Some(i),
            _ => None,
        };
        let number = |e: &Expr| {
            e.atom()
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|v| v.is_finite())
        };
        for (var, value, flipped) in [(a, b, false), (b, a, true)] {
            if let Some(i) = input(var) {
                if i >= self.inputs {
                    return Err((line, format!("X_{i} is not declared")));
                }
                let Some(bound) = number(value) else {
                    return Err((
                        line,
                        format!("X_{i} compared with something other than a finite number; expected an input box"),
                    ));
                };
                // `X ≤ c` (or `c ≥ X`) is an upper bound.
                let upper = (op == "<=") != flipped;
                return Ok(Compared::Input {
                    index: i,
                    bound,
                    upper,
                });
            }
        }
        let (la, lb) = (self.linear(a)?, self.linear(b)?);
        // `A ≥ B` is `A − B ≥ 0`; `A ≤ B` is `B − A ≥ 0`.
        let (hi, lo) = if op == ">=" { (la, lb) } else { (lb, la) };
        let coefficients = hi.0.iter().zip(&lo.0).map(|(h, l)| h - l).collect();
        Ok(Compared::Outputs(Constraint {
            coefficients,
            constant: hi.1 - lo.1,
        }))
    }

    fn linear(&self, e: &Expr) -> std::result::Result<Linear, (usize, String)> {
        let line = e.line;
        let zero = || vec![0.0; self.outputs];
        if let Some(atom) = e.atom() {
            if let Ok(v) = atom.parse::<f64>() {
                if !v.is_finite() {
                    return Err((line, format!("`{atom}`; expected a finite number")));
                }
                return Ok((zero(), v));
            }
            return match variable(atom) {
                Some(Var::Y(j)) if j < self.outputs => {
                    let mut c = zero();
                    c[j] = 1.0;
                    Ok((c, 0.0))
                }
                Some(Var::X(_)) => Err((
                    line,
                    format!(
                        "`{atom}` in a constraint with the outputs; expected input bounds alone"
                    ),
                )),
                _ => Err((
                    line,
                    format!("`{atom}` is not a declared variable or a number"),
                )),
            };
        }
        let items = e.list().expect("a list");
        let op = items.first().and_then(Expr::atom);
        let terms = items[1..]
            .iter()
            .map(|t| self.linear(t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let sum = |terms: &[Linear], sign: f64| {
            let mut out = (zero(), 0.0);
            for (c, k) in terms {
                for (o, v) in out.0.iter_mut().zip(c) {
                    *o += sign * v;
                }
                out.1 += sign * k;
            }
            out
        };
        let term = match (op, terms.len()) {
            (Some("+"), 1..) => Ok(sum(&terms, 1.0)),
            (Some("-"), 1) => Ok(sum(&terms, -1.0)),
            (Some("-"), 2..) => {
                let (first, rest) = terms.split_first().expect("terms");
                let rest = sum(rest, -1.0);
                Ok(sum(&[first.clone(), rest], 1.0))
            }
            (Some("*"), 2) => {
                let constant = |t: &Linear| t.0.iter().all(|&c| c == 0.0);
                let (k, t) = match (constant(&terms[0]), constant(&terms[1])) {
                    (true, _) => (terms[0].1, &terms[1]),
                    (_, true) => (terms[1].1, &terms[0]),
                    _ => {
                        return Err((line, "a product of variables; expected linear terms".into()))
                    }
                };
                Ok((t.0.iter().map(|c| c * k).collect(), t.1 * k))
            }
            _ => Err((
                line,
                "expected a linear term: a number, Y_j, or `+`, `-`, `*` (by a constant) of terms"
                    .into(),
            )),
        }?;
        if !(term.1.is_finite() && term.0.iter().all(|c| c.is_finite())) {
            return Err((
                line,
                "a term whose coefficients overflow; expected finite ones".into(),
            ));
        }
        Ok(term)
    }
}

#[cfg(test)]
mod should {
    use super::*;

    const SMALL: &str = "; two inputs, three outputs\n\
        (declare-const X_0 Real)\n(declare-const X_1 Real)\n\
        (declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n\
        (assert (<= X_0 0.5))\n(assert (>= X_0 -0.5))\n\
        (assert (and (<= 0.0 X_1) (>= 1.0 X_1)))\n\
        (assert (<= Y_2 (+ 1.0 (* 2.0 Y_0))))\n\
        (assert (or\n  (and (>= Y_1 Y_0))\n  (and (>= (- Y_2 Y_0 0.5) 0))\n))\n";

    #[test]
    fn read_boxes_and_linear_output_regions() -> Result<()> {
        let p = Property::parse(SMALL, "small.vnnlib")?;
        assert_eq!(p.lower, vec![-0.5, 0.0]);
        assert_eq!(p.upper, vec![0.5, 1.0]);
        assert_eq!(p.outputs, 3);
        // The top-level constraint 1 + 2·Y_0 − Y_2 ≥ 0 joins both terms of the `or`.
        let top = Constraint {
            coefficients: vec![2.0, 0.0, -1.0],
            constant: 1.0,
        };
        assert_eq!(
            p.violation,
            vec![
                vec![
                    Constraint {
                        coefficients: vec![-1.0, 1.0, 0.0],
                        constant: 0.0
                    },
                    top.clone()
                ],
                vec![
                    Constraint {
                        coefficients: vec![-1.0, 0.0, 1.0],
                        constant: -0.5
                    },
                    top
                ],
            ]
        );
        assert!(p.violated(&[0.0, 1.0, 0.0]));
        assert!(p.violated(&[0.0, -1.0, 0.75]));
        assert!(!p.violated(&[0.0, -1.0, 0.25]));
        assert!(
            !p.violated(&[0.0, 1.0, 2.0]),
            "the top-level constraint fails"
        );
        assert!(p.contains(&[0.5, 0.0]) && !p.contains(&[0.6, 0.0]));
        Ok(())
    }

    fn says(text: &str, what: &str) {
        match Property::parse(text, "bad.vnnlib") {
            Err(Error::Format { reason, .. }) => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected a format error saying {what:?}, got {other:?}"),
        }
    }

    #[test]
    fn refuse_what_it_does_not_read_saying_where() {
        let decl = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n";
        let bx = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n";
        let out = "(assert (>= Y_1 Y_0))\n";
        says(
            &format!("{decl}{bx}{out}("),
            "line 7: a `(` that is never closed",
        );
        says(
            &format!("{decl}{bx}{out})"),
            "line 7: a `)` that closes nothing",
        );
        says(
            &format!("{decl}(assert (>= X_0 0))\n{out}"),
            "X_0 lacks a lower or an upper bound",
        );
        says(
            &format!("{decl}{bx}(assert (>= X_0 0.5))\n{out}"),
            "line 6: a second bound on X_0",
        );
        says(
            &format!("{decl}{bx}(assert (>= Y_2 Y_0))\n"),
            "`Y_2` is not a declared variable",
        );
        says(
            &format!("{decl}{bx}(assert (>= (* Y_1 Y_0) 0))\n"),
            "a product of variables",
        );
        says(
            &format!("{decl}{bx}(assert (or (and (>= X_0 0.5)) (and (>= Y_1 Y_0))))\n"),
            "an input bound inside `or`",
        );
        says(
            &format!("{decl}{bx}(assert (>= Y_1 X_0))\n"),
            "X_0 compared with something other than a finite number",
        );
        says(
            &format!("{decl}{bx}(assert (>= Y_1 (+ Y_0 X_0)))\n"),
            "expected input bounds alone",
        );
        says(
            &format!("{decl}{bx}(assert (> Y_1 Y_0))\n"),
            "expected a comparison",
        );
        says(&format!("{decl}{bx}"), "no output constraint");
        says("(declare-const X_1 Real)\n", "expected X_0 or Y_0");
        says(
            &format!("{decl}(assert (>= X_0 1))\n(assert (<= X_0 0))\n{out}"),
            "above its upper bound",
        );
    }
}
