//! The README's troubleshooting section is the user's map of condition
//! reasons: every reason the operator can set is explained there, and the
//! table names no reason the operator does not know.

use kvsync::reason::Reason;

fn troubleshooting() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("## Troubleshooting")
        .expect("a Troubleshooting section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map(|i| i + 3).unwrap_or(rest.len());
    readme[start..start + end].to_string()
}

#[test]
fn every_reason_is_explained_in_the_readme() {
    let text = troubleshooting();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .filter(|r| !text.contains(&format!("`{r}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README troubleshooting lacks: {missing:?}"
    );
}

#[test]
fn the_readme_table_names_only_real_reasons() {
    let text = troubleshooting();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        for name in first_cell.split('`').skip(1).step_by(2) {
            assert!(
                Reason::parse(name).is_some(),
                "README names reason {name:?}, which kvsync never sets"
            );
        }
    }
}
