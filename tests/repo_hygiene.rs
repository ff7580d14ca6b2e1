//! The repository is self-contained: a clone needs nothing outside it.
//!
//! - no tracked file points into the team's notes folder beside the checkout ([`OUTSIDE`]);
//! - every relative link in `README.md` and `docs/*.md` names a file that is in the repository.
//!
//! Files are the ones git tracks (`git ls-files`), so build outputs and virtual environments are
//! never scanned. The pattern is assembled at compile time, so this file never spells it.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

const THIS_FILE: &str = "tests/repo_hygiene.rs";
/// The path a clone does not have (the team's notes beside the checkout), built from parts so that
/// no tracked file, this one included, contains it.
const OUTSIDE: &str = concat!("..", "/", "shar", "ed");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every tracked file, relative to the repository root.
fn tracked_files() -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["ls-files", "-z"])
        .output()
        .expect("git runs (the hygiene tests read the list of tracked files from git)");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "git ls-files did not list Cargo.toml: not run from this repository?"
    );
    files
}

/// `path:line: text` for every line of `text` that contains `needle`.
fn lines_containing(path: &str, text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(i, line)| format!("{path}:{}: {}", i + 1, line.trim()))
        .collect()
}

#[test]
fn lines_containing_reports_path_and_line_number() {
    let text = format!("one\nsee {OUTSIDE}/x\nthree {OUTSIDE}");
    let hits = lines_containing("a.md", &text, OUTSIDE);
    assert_eq!(
        hits,
        [
            format!("a.md:2: see {OUTSIDE}/x"),
            format!("a.md:3: three {OUTSIDE}")
        ]
    );
}

#[test]
fn no_tracked_file_points_into_shared() {
    let root = repo_root();
    let mut hits = Vec::new();
    for file in tracked_files() {
        if file == THIS_FILE {
            continue;
        }
        // Deleted but not yet committed files are still listed; they cannot point anywhere.
        let Ok(bytes) = std::fs::read(root.join(&file)) else {
            continue;
        };
        hits.extend(lines_containing(
            &file,
            &String::from_utf8_lossy(&bytes),
            OUTSIDE,
        ));
    }
    assert!(
        hits.is_empty(),
        "these tracked files point into {OUTSIDE}, which a clone does not have (link to docs/ \
         instead):\n{}",
        hits.join("\n")
    );
}

/// The targets of the Markdown links `[text](target)` in `text` that are relative paths
/// (no URL scheme, no pure `#anchor`), without their `#anchor` part.
fn relative_link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        let target = target.split('#').next().unwrap_or_default();
        let is_url = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !is_url && !target.contains(char::is_whitespace) {
            targets.push(target.to_string());
        }
        rest = &rest[end..];
    }
    targets
}

#[test]
fn relative_link_targets_skips_urls_and_anchors() {
    let text = "[a](docs/A.md) [b](https://x.org/y) [c](#top) [d](B.md#part) [e](mailto:x@y)";
    assert_eq!(relative_link_targets(text), ["docs/A.md", "B.md"]);
}

/// `a/./b/../c` -> `a/c`, with `/` separators, as git spells tracked paths.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    parts.join("/")
}

#[test]
fn normalize_resolves_dot_segments() {
    assert_eq!(
        normalize(Path::new("docs/../include/isoclip.h")),
        "include/isoclip.h"
    );
    assert_eq!(normalize(Path::new("./docs/METHOD.md")), "docs/METHOD.md");
}

#[test]
fn documentation_links_name_files_in_the_repository() {
    let root = repo_root();
    let files = tracked_files();
    let documents = files
        .iter()
        .filter(|f| *f == "README.md" || (f.starts_with("docs/") && f.ends_with(".md")));
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents {
        let text = std::fs::read_to_string(root.join(doc)).expect("documentation is UTF-8");
        let dir = Path::new(doc).parent().unwrap_or(Path::new(""));
        for target in relative_link_targets(&text) {
            checked += 1;
            let path = normalize(&dir.join(&target));
            let folder = format!("{path}/");
            let tracked = files.iter().any(|f| *f == path || f.starts_with(&folder));
            if !tracked {
                broken.push(format!(
                    "{doc}: link to {target}, which is not a tracked file or folder"
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "README.md and docs/ hold no relative link at all"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
