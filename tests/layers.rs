//! The runtime's modules point one way (`../shared/DESIGN.md`): no module imports a module that
//! imports it back. The test reads `robust-runtime/src`, collects every `crate::<module>` path
//! outside comments and test modules (and the crate-root re-exports, by the module they come
//! from), and fails on any pair of modules that use each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Crate-root names and the module each is re-exported from (`robust-runtime/src/lib.rs`).
const ROOT: &[(&str, &str)] = &[
    ("Dataset", "data"),
    ("Error", "error"),
    ("Result", "error"),
    ("RobustnessCase", "case"),
    ("InvarianceReport", "eval"),
    ("RobustnessReport", "eval"),
    ("InputDomain", "domain"),
    ("Normalize", "domain"),
    ("Model", "model"),
    ("Rng", "rng"),
    ("RngState", "rng"),
];

/// Pairs allowed to import each other: none (`Model::from(Preprocessed)` builds a defended
/// model, where `Model::new` once recognised one by a downcast).
const KNOWN: &[(&str, &str)] = &[];

fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn uses(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = text[at..].find("crate::") {
        let start = at + i + "crate::".len();
        // `crate::{a, b::c}` or `crate::name`.
        let names: Vec<String> = if bytes.get(start) == Some(&b'{') {
            let end = text[start..].find('}').map_or(text.len(), |e| start + e);
            text[start + 1..end]
                .split(',')
                .map(|p| p.trim().split("::").next().unwrap_or("").trim().to_string())
                .collect()
        } else {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            vec![name]
        };
        for name in names {
            if modules.contains(&name) {
                out.insert(name);
            } else if let Some((_, module)) = ROOT.iter().find(|(n, _)| *n == name) {
                out.insert(module.to_string());
            }
        }
        at = start;
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_runtime_module_imports_a_module_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("robust-runtime/src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            (name != "lib" && (p.is_dir() || p.extension().is_some_and(|e| e == "rs")))
                .then_some(name)
        })
        .collect();
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let text = code_of(&std::fs::read_to_string(&file).unwrap());
        let used = uses(&text, &modules);
        graph
            .entry(top.clone())
            .or_default()
            .extend(used.into_iter().filter(|m| *m != top));
    }
    let mut pairs = Vec::new();
    for (a, used) in &graph {
        for b in used {
            if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    let known: Vec<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(
        pairs, known,
        "modules that import each other (graph: {graph:#?})"
    );
    // The bottom stays at the bottom.
    for bottom in ["error", "stats", "check", "domain", "env", "case"] {
        let above: Vec<&String> = graph[bottom]
            .iter()
            .filter(|m| !["error", "data", "rng", "model", "domain"].contains(&m.as_str()))
            .collect();
        assert!(above.is_empty(), "`{bottom}` uses {above:?}");
    }
}
