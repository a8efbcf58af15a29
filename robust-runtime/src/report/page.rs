//! `target/robust/index.html`: one self-contained page over every test whose report folder is
//! under `target/robust/` (what `cargo robust report` writes). Pictures are embedded as data
//! URIs, so the page needs no server and no network and can be uploaded as one CI artifact.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::markup::{attr as esc, text};
use super::record::{records, TestRecord};
use crate::{Error, Result};

/// The page's file name in `target/robust/`.
pub const PAGE_FILE: &str = "index.html";

/// The metric a page shows as a test's robustness: robust, certified or perturbed accuracy.
const HEADLINE: [&str; 3] = ["robust_accuracy", "certified_accuracy", "invariance"];

/// What [`write_page`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The page.
    pub path: PathBuf,
    /// Tests on it.
    pub tests: usize,
    /// Of which failed.
    pub failed: usize,
    /// `result.json` files that could not be read (each named, with why).
    pub skipped: Vec<String>,
}

/// Writes `index.html` into `robust_dir` (the `target/robust/` folder) from every
/// `result.json` below it whose test name contains `filter` (all of them for `None`).
///
/// # Errors
/// When `robust_dir` holds no test results (no test has run), or the page cannot be written.
pub fn write_page(robust_dir: &Path, filter: Option<&str>) -> Result<Page> {
    let (mut found, errors) = records(robust_dir);
    found.retain(|(_, r)| filter.is_none_or(|f| r.test.contains(f)));
    if found.is_empty() {
        return Err(Error::param(
            "report folder",
            robust_dir.display().to_string(),
            match filter {
                Some(f) => format!("a folder with results of tests whose name contains `{f}`"),
                None => "a folder with test results (run `cargo test` or `cargo robust run` first)"
                    .into(),
            },
        ));
    }
    let skipped: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let html = render(robust_dir, &found, &skipped);
    let path = robust_dir.join(PAGE_FILE);
    std::fs::write(&path, html).map_err(|e| Error::io(&path, e))?;
    Ok(Page {
        path,
        tests: found.len(),
        failed: found.iter().filter(|(_, r)| !r.passed).count(),
        skipped,
    })
}

fn render(root: &Path, found: &[(PathBuf, TestRecord)], skipped: &[String]) -> String {
    let failed = found.iter().filter(|(_, r)| !r.passed).count();
    let mut h = String::with_capacity(1 << 16);
    h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    let _ = writeln!(
        h,
        "<title>robust: {} tests, {failed} failed</title>",
        found.len()
    );
    h += STYLE;
    h += "</head>\n<body>\n<header>\n<h1>Robustness report</h1>\n";
    let _ = writeln!(
        h,
        "<p class=\"counts\"><span class=\"{}\">{} of {} tests passed</span>{}</p>",
        if failed == 0 { "pass" } else { "fail" },
        found.len() - failed,
        found.len(),
        if failed > 0 {
            format!(" · <span class=\"fail\">{failed} failed</span>")
        } else {
            String::new()
        }
    );
    h += "</header>\n<main>\n";
    for s in skipped {
        let _ = writeln!(h, "<p class=\"warn\">skipped: {}</p>", esc(s));
    }
    h += SUMMARY_HEAD;
    for (i, (_, r)) in found.iter().enumerate() {
        let headline = HEADLINE.iter().find_map(|m| r.metric(m));
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td><span class=\"badge {}\">{}</span></td>\
             <td><a href=\"#t{i}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.passed { "ok" } else { "bad" },
            if r.passed { "pass" } else { "fail" },
            esc(&r.verdict),
            esc(&r.test),
            esc(&r.kind),
            esc(&r.model),
            share(r.metric("clean_accuracy").map(|m| m.value)),
            headline.map_or("–".into(), |m| format!(
                "{} <span class=\"label\">{}</span>",
                share(Some(m.value)),
                esc(&m.name.replace('_', " "))
            )),
            headline.map_or("–".into(), |m| delta(m.value, m.baseline)),
        );
    }
    h += "</tbody>\n</table>\n";
    for (i, (path, r)) in found.iter().enumerate() {
        section(&mut h, root, i, path, r);
    }
    h += "</main>\n";
    h += CHECK;
    h += "</body>\n</html>\n";
    h
}

fn section(h: &mut String, root: &Path, i: usize, path: &Path, r: &TestRecord) {
    let dir = path.parent().unwrap_or(root);
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let rel = rel.to_string_lossy().replace('\\', "/");
    let _ = writeln!(
        h,
        "<section id=\"t{i}\" class=\"{}\">\n<h2><span class=\"badge {}\">{}</span> {}</h2>",
        if r.passed { "ok" } else { "bad" },
        if r.passed { "pass" } else { "fail" },
        esc(&r.verdict),
        esc(&r.test)
    );
    let _ = writeln!(
        h,
        "<p class=\"config\">{} · model <b>{}</b> · {}</p>",
        esc(&r.kind),
        esc(&r.model),
        esc(&r.config)
    );
    *h +=
        "<div class=\"row\">\n<table class=\"metrics\">\n<thead><tr><th>metric</th><th>value</th>\
           <th>baseline</th><th>change</th></tr></thead>\n<tbody>\n";
    for m in &r.metrics {
        let value = |v: f64| {
            if m.gated {
                share(Some(v))
            } else {
                format!("{v:.4}")
            }
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.name.replace('_', " ")),
            value(m.value),
            m.baseline.map_or("–".into(), value),
            if m.gated {
                delta(m.value, m.baseline)
            } else {
                "".into()
            }
        );
    }
    *h += "</tbody>\n</table>\n";
    if let Some(svg) = read(&dir.join("curve.svg")) {
        let _ = writeln!(
            h,
            "<figure><img class=\"curve\" alt=\"accuracy curve of {}\" src=\"data:image/svg+xml;base64,{}\"></figure>",
            esc(&r.test),
            base64(&svg)
        );
    }
    for (what, picture) in pictures(dir) {
        if let Some(png) = read(&picture) {
            let _ = writeln!(
                h,
                "<figure><img class=\"grid\" alt=\"{} of {}\" src=\"data:image/png;base64,{}\">\
                 <figcaption>{}</figcaption></figure>",
                esc(what),
                esc(&r.test),
                base64(&png),
                esc(what)
            );
        }
    }
    *h += "</div>\n";
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            h,
            "<details><summary>baseline</summary><pre>{}</pre></details>",
            text(&b.summary)
        );
    }
    let _ = writeln!(
        h,
        "<details{}><summary>{}</summary><pre>{}</pre></details>",
        if r.passed { "" } else { " open" },
        if r.passed { "report" } else { "failure" },
        text(&r.message)
    );
    let _ = writeln!(
        h,
        "<p class=\"files\"><a href=\"{0}/report.json\">report.json</a> · \
         <a href=\"{0}/summary.md\">summary.md</a></p>\n</section>",
        esc(&rel)
    );
}

/// The pictures of a test's folder, captioned: the worst adversarial examples, and each
/// counterexample picture its `report.json` names (a perturbation test's shrunk cases).
fn pictures(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let grid = dir.join("examples.png");
    if grid.is_file() {
        out.push((
            "worst adversarial examples: original, adversarial, perturbation",
            grid,
        ));
    }
    let json = read(&dir.join("report.json"))
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let mut named = Vec::new();
    if let Some(json) = json {
        collect_images(&json, &mut named);
    }
    for path in named {
        if path.is_file() {
            out.push(("counterexample: original, perturbed, difference", path));
        }
    }
    out
}

fn collect_images(v: &serde_json::Value, out: &mut Vec<PathBuf>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == "image" && s.ends_with(".png") => {
                        out.push(PathBuf::from(s))
                    }
                    _ => collect_images(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_images(v, out)),
        _ => {}
    }
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// A share as a percentage with one decimal.
fn share(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v))
}

/// The change from the baseline in percentage points, coloured.
fn delta(now: f64, before: Option<f64>) -> String {
    let Some(before) = before else {
        return "–".into();
    };
    let pp = 100.0 * (now - before);
    let class = if pp < -0.05 {
        "down"
    } else if pp > 0.05 {
        "up"
    } else {
        "same"
    };
    format!("<span class=\"{class}\">{pp:+.1} pp</span>")
}

/// Standard base64 (RFC 4648, with padding), for data URIs.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Marks the page when a picture failed to decode or a script error happened: a banner for
/// the reader, and `data-check` on `<body>` (`ok`, or what broke) for a headless browser check.
const CHECK: &str = "<script>
(function () {
  var broken = [];
  window.addEventListener('error', function (e) { broken.push('script error: ' + e.message); });
  window.addEventListener('load', function () {
    document.querySelectorAll('img').forEach(function (img) {
      if (!img.complete || img.naturalWidth === 0) { broken.push('image did not load: ' + img.alt); }
    });
    document.body.setAttribute('data-check', broken.length ? broken.join('; ') : 'ok');
    if (broken.length) {
      var p = document.createElement('p');
      p.className = 'warn';
      p.textContent = 'This page is incomplete: ' + broken.join('; ');
      document.querySelector('main').prepend(p);
    }
  });
})();
</script>
";

const SUMMARY_HEAD: &str = "<table class=\"summary\">\n<thead><tr><th>verdict</th><th>test</th>\
    <th>kind</th><th>model</th><th>clean</th><th>robustness</th><th>vs baseline</th></tr></thead>\n<tbody>\n";

const STYLE: &str = "<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f6f7f9; }
header { background: #1d232b; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
main { padding: 20px 28px; max-width: 1200px; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e3e6ea; text-align: left; white-space: nowrap; }
td a { white-space: normal; }
th { font-weight: 600; background: #eef0f3; }
table.summary { width: 100%; margin-bottom: 28px; }
section { background: #fff; border: 1px solid #e3e6ea; border-left: 5px solid #2e9d57;
  border-radius: 4px; padding: 6px 18px 12px; margin-bottom: 22px; }
section.bad { border-left-color: #d1372f; }
h2 { font-size: 17px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; color: #fff; background: #2e9d57; }
.badge.fail { background: #d1372f; }
.counts .pass { color: #7fe0a2; } .counts .fail { color: #ff9b94; }
.label { color: #6b7580; font-size: 12px; }
.down { color: #d1372f; font-weight: 600; } .up { color: #2e9d57; } .same { color: #6b7580; }
.config { color: #4a535d; margin-top: -6px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 10px 0; } figcaption { color: #6b7580; font-size: 12px; }
img.curve { width: 440px; } img.grid { image-rendering: pixelated; max-width: 100%; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; font-size: 12.5px; }
.warn { color: #a05a00; }
</style>
";

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn encode_base64_as_rfc_4648_says() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
