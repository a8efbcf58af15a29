//! The files one test run leaves in its folder: `report.json`, `summary.md`, `curve.svg` and
//! `examples.png`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::outcome::{AdversarialExample, Curve, Outcome};
use super::png_grid::{write_grid, Image};
use crate::{Error, Result};

/// The paths of what [`write`] wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportFiles {
    /// The folder.
    pub dir: PathBuf,
    /// The whole report as JSON (serde of the report type).
    pub json: Option<PathBuf>,
    /// A Markdown summary: the table, the assertions, the baseline comparison.
    pub markdown: Option<PathBuf>,
    /// Accuracy against radius, as SVG.
    pub plot: Option<PathBuf>,
    /// The worst adversarial examples: original, adversarial, perturbation.
    pub examples: Option<PathBuf>,
}

impl ReportFiles {
    /// One line per file, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("report files in {}:", self.dir.display());
        for (what, path) in [
            ("summary", &self.markdown),
            ("JSON", &self.json),
            ("plot", &self.plot),
            ("worst examples", &self.examples),
        ] {
            if let Some(p) = path {
                let _ = write!(s, "\n    {what:<15} {}", p.display());
            }
        }
        s
    }
}

/// Writes the report files of `outcome` into `dir` (created if needed). `extra` is appended to
/// the Markdown summary (the baseline comparison).
pub fn write<R: Outcome>(dir: &Path, outcome: &R, extra: &str) -> Result<ReportFiles> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = ReportFiles {
        dir: dir.to_path_buf(),
        ..ReportFiles::default()
    };

    let json_path = dir.join("report.json");
    let json = serde_json::to_string_pretty(outcome)
        .map_err(|e| Error::format("JSON", &json_path, e.to_string()))?;
    std::fs::write(&json_path, json + "\n").map_err(|e| Error::io(&json_path, e))?;
    files.json = Some(json_path);

    // A curve is worth a picture with three points or more: a single-ε attack's (0, clean)
    // and (ε, robust) would be one straight line.
    let plot = dir.join("curve.svg");
    match outcome.curve().filter(|c| c.points.len() >= 3) {
        Some(curve) => {
            std::fs::write(&plot, svg_plot(&curve)).map_err(|e| Error::io(&plot, e))?;
            files.plot = Some(plot);
        }
        None => {
            let _ = std::fs::remove_file(&plot);
        }
    }

    let examples = outcome.examples();
    let grid = dir.join("examples.png");
    if examples.is_empty() {
        // A stale picture from an earlier run must not pass for this one's.
        let _ = std::fs::remove_file(&grid);
    } else {
        write_examples(&grid, examples)?;
        files.examples = Some(grid);
    }

    let md_path = dir.join("summary.md");
    std::fs::write(&md_path, markdown(outcome, &files, extra))
        .map_err(|e| Error::io(&md_path, e))?;
    files.markdown = Some(md_path);
    Ok(files)
}

fn markdown<R: Outcome>(outcome: &R, files: &ReportFiles, extra: &str) -> String {
    let mut md = format!(
        "# {}: {}\n\n",
        outcome.test(),
        if outcome.passed() { "passed" } else { "FAILED" }
    );
    md += "```text\n";
    md += &outcome.to_string();
    md += "\n```\n";
    if !extra.is_empty() {
        md += "\n## Baseline\n\n```text\n";
        md += extra;
        md += "\n```\n";
    }
    md += "\n## Metrics\n\n| metric | value |\n|---|---|\n";
    for m in outcome.metrics() {
        let _ = writeln!(md, "| {} | {:.4} |", m.name, m.value);
    }
    if files.plot.is_some() {
        md += "\n![accuracy against radius](curve.svg)\n";
    }
    if files.examples.is_some() {
        md += "\n## Worst adversarial examples\n\nEach row: the original, the adversarial \
               example, and the perturbation (grey is 0, scaled to its largest value).\n\n\
               ![worst adversarial examples](examples.png)\n\n| row | sample | label | \
               prediction | wrong-class margin |\n|---|---|---|---|---|\n";
        for (i, e) in outcome.examples().iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} |",
                i + 1,
                e.index,
                e.label,
                e.adv_pred,
                e.margin
            );
        }
    }
    md
}

/// `C × H × W` of one input: images as they are, flat inputs of a square size as a square.
fn image_shape(shape: &[usize]) -> (usize, usize, usize) {
    match *shape {
        [c, h, w] => (c, h, w),
        [h, w] => (1, h, w),
        [d] => {
            let side = (d as f64).sqrt().round() as usize;
            if side * side == d {
                (1, side, side)
            } else {
                (1, 1, d)
            }
        }
        _ => (1, 1, shape.iter().product()),
    }
}

fn write_examples(path: &Path, examples: &[AdversarialExample]) -> Result<()> {
    let deltas: Vec<Vec<f32>> = examples
        .iter()
        .map(|e| {
            e.adversarial
                .iter()
                .zip(&e.clean)
                .map(|(a, c)| a - c)
                .collect()
        })
        .collect();
    let mut rows = Vec::new();
    for (e, delta) in examples.iter().zip(&deltas) {
        let (c, h, w) = image_shape(&e.shape);
        let (lo, hi) = e
            .clean
            .iter()
            .chain(&e.adversarial)
            .fold((0.0f32, 1.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = delta.iter().fold(0.0f32, |m, d| m.max(d.abs())).max(1e-12);
        rows.push(vec![
            Image::new(&e.clean, c, h, w, (lo, hi))?,
            Image::new(&e.adversarial, c, h, w, (lo, hi))?,
            Image::new(delta, c, h, w, (-scale, scale))?,
        ]);
    }
    let rows: Vec<&[Image<'_>]> = rows.iter().map(Vec::as_slice).collect();
    write_grid(path, &rows, 4)
}

/// A line chart of `curve` as a self-contained SVG: y in [0, 1], x from 0 to the largest x.
pub fn svg_plot(curve: &Curve) -> String {
    const W: f64 = 520.0;
    const H: f64 = 340.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 24.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 56.0;
    let x_max = curve
        .points
        .iter()
        .map(|p| p.0)
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let px = |x: f64| LEFT + (W - LEFT - RIGHT) * x / x_max;
    let py = |y: f64| TOP + (H - TOP - BOTTOM) * (1.0 - y.clamp(0.0, 1.0));
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        esc(&curve.title)
    );
    for i in 0..=5 {
        let y = i as f64 / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{4}%</text>",
            py(y),
            W - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            (100.0 * y).round()
        );
    }
    for i in 0..=4 {
        let x = x_max * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">{4}</text>",
            px(x),
            TOP,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            (x * 1e4).round() / 1e4
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">{}</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 14.0,
        esc(&curve.x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        esc(&curve.y_label)
    );
    if let Some(m) = curve.marked {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#c33\" \
             stroke-dasharray=\"4 3\"/>",
            px(m),
            TOP,
            H - BOTTOM
        );
    }
    let path: Vec<String> = curve
        .points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for &(x, y) in &curve.points {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#1f5fa8\"><title>{}: {:.2}%</title></circle>",
            px(x),
            py(y),
            x,
            100.0 * y
        );
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn place_points_on_the_axes_of_the_plot() {
        let svg = svg_plot(&Curve {
            title: "mnist <mlp>".into(),
            x_label: "ε (L∞)".into(),
            y_label: "robust accuracy".into(),
            points: vec![(0.0, 1.0), (0.1, 0.5), (0.2, 0.0)],
            marked: Some(0.1),
        });
        // x: 64 + 432·x/0.2; y: 40 + 244·(1 − acc).
        assert!(
            svg.contains("points=\"64.0,40.0 280.0,162.0 496.0,284.0\""),
            "{svg}"
        );
        assert!(svg.contains("mnist &lt;mlp&gt;"));
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn draw_flat_inputs_as_squares() {
        assert_eq!(image_shape(&[784]), (1, 28, 28));
        assert_eq!(image_shape(&[64]), (1, 8, 8));
        assert_eq!(image_shape(&[10]), (1, 1, 10));
        assert_eq!(image_shape(&[3, 32, 32]), (3, 32, 32));
    }
}
