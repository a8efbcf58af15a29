//! The README's key table is the key table: every key, its tests, type, default and meaning,
//! as `robust_spec::KEYS` declares them. Regenerate with
//! `ROBUST_README=write cargo test -p robust-spec --test readme`, then read the diff.

const BEGIN: &str = "<!-- key table: generated from robust_spec::KEYS (robust-macros/spec/src/keys.rs); checked by robust-macros/spec/tests/readme.rs -->\n";
const END: &str = "<!-- end of key table -->";

fn readme_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

#[test]
fn the_readme_key_table_is_the_key_table() {
    let path = readme_path();
    let text = std::fs::read_to_string(&path).expect("README.md beside the workspace");
    let start = text.find(BEGIN).expect("the README marks its key table") + BEGIN.len();
    let end = start + text[start..].find(END).expect("the key table ends");
    let expected = robust_spec::readme_table();
    if std::env::var("ROBUST_README").as_deref() == Ok("write") {
        let updated = format!("{}{expected}{}", &text[..start], &text[end..]);
        std::fs::write(&path, updated).expect("README.md is writable");
        return;
    }
    let actual = &text[start..end];
    assert!(
        actual == expected,
        "README.md's key table differs from robust_spec::KEYS; expected:\n{expected}"
    );
}

/// Every key of the table appears in the generated table, and no other: a check on the
/// generator itself, against the table's own list.
#[test]
fn the_generated_table_has_one_row_per_key() {
    let table = robust_spec::readme_table();
    let rows: Vec<&str> = table
        .lines()
        .skip(2)
        .map(|row| row.split('`').nth(1).expect("a key in backticks"))
        .collect();
    assert_eq!(rows, robust_spec::key_names());
}
