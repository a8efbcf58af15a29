//! Results of `cargo robust run`, and their JUnit XML (the layout Jenkins, GitLab and GitHub
//! test-report actions read: `testsuites` / `testsuite` / `testcase` with `failure`, `error`
//! and `skipped`).

use std::fmt::Write as _;

use crate::harness::{TrialResult, Verdict};
use crate::report::markup::{attr, text};

/// The JUnit XML of a suite's results: one `testsuite` named `suite`, one `testcase` per
/// trial (`classname` the suite and model, `name` the test), failures and errors with their
/// messages, ignored trials as `skipped`.
pub fn junit_xml(suite: &str, results: &[TrialResult]) -> String {
    let count = |f: fn(&TrialResult) -> bool| results.iter().filter(|r| f(r)).count();
    let failures = count(|r| matches!(r.verdict, Some(Verdict::Failed(_))));
    let errors = count(|r| matches!(r.verdict, Some(Verdict::Error(_))));
    let skipped = count(|r| r.verdict.is_none());
    let time: f64 = results.iter().map(|r| r.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let totals = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\"",
        results.len()
    );
    let _ = writeln!(x, "<testsuites name=\"robust\" {totals}>");
    let _ = writeln!(x, "  <testsuite name=\"{}\" {totals}>", attr(suite));
    for r in results {
        let (class, name) = r.name.rsplit_once("::").unwrap_or((suite, &r.name));
        let _ = write!(
            x,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            attr(class),
            attr(name),
            r.seconds
        );
        let first_line = r.message().lines().next().unwrap_or("");
        match &r.verdict {
            Some(Verdict::Passed(m)) => {
                let _ = writeln!(
                    x,
                    ">\n      <system-out>{}</system-out>\n    </testcase>",
                    text(m)
                );
            }
            Some(Verdict::Failed(m)) => {
                let _ = writeln!(
                    x,
                    ">\n      <failure type=\"robustness\" message=\"{}\">{}</failure>\n    </testcase>",
                    attr(first_line),
                    text(m)
                );
            }
            Some(Verdict::Error(m)) => {
                let _ = writeln!(
                    x,
                    ">\n      <error type=\"could not run\" message=\"{}\">{}</error>\n    </testcase>",
                    attr(first_line),
                    text(m)
                );
            }
            None => {
                let _ = writeln!(x, ">\n      <skipped/>\n    </testcase>");
            }
        }
    }
    x += "  </testsuite>\n</testsuites>\n";
    x
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn count_failures_errors_and_skips_in_the_totals() {
        let r = |name: &str, v| TrialResult {
            name: name.into(),
            verdict: v,
            seconds: 1.5,
        };
        let xml = junit_xml(
            "robustness",
            &[
                r("robustness::m::a", Some(Verdict::Passed("fine".into()))),
                r(
                    "robustness::m::b",
                    Some(Verdict::Failed("below <0.5>\nmore".into())),
                ),
                r("robustness::m::c", Some(Verdict::Error("no file".into()))),
                r("robustness::m::d", None),
            ],
        );
        assert!(xml.contains(
            "<testsuite name=\"robustness\" tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\" time=\"6.000\">"
        ));
        assert!(xml.contains("<testcase classname=\"robustness::m\" name=\"b\" time=\"1.500\">"));
        assert!(xml.contains("message=\"below &lt;0.5&gt;\">below &lt;0.5&gt;\nmore</failure>"));
        assert!(xml.contains("<skipped/>"));
    }
}
