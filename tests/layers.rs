//! The engine's modules in layers, imports one way: the picture in ARCHITECTURE.md is the rule,
//! and this test holds the code to it. Each module of `src/` may use (`crate::…`) only modules
//! on lines below its own in the picture; every module is in the picture. Unit tests
//! (`mod tests`, `tests.rs`) and comments are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The picture: the fenced block after the `<!-- layers -->` marker, top line first.
fn layers(architecture: &str) -> Vec<Vec<String>> {
    let (_, after) = architecture
        .split_once("<!-- layers -->")
        .expect("ARCHITECTURE.md has a <!-- layers --> picture");
    let block = after
        .split("```")
        .nth(1)
        .expect("the picture is a fenced block after the marker");
    block
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter(|word| word.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// The code a module's rule applies to: without its unit tests and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names: `crate::name` and each item of `crate::{a, b::c}`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .collect(),
            None => vec![rest],
        };
        for name in names {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Each top-level module of `src/` (a file or a folder) and the modules its code uses.
fn modules(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    // The binary's files and the crate root are not engine modules.
    const NOT_MODULES: [&str; 4] = ["main", "cli", "lib", "test_alloc"];
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.file_stem().is_some_and(|s| s == "tests") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if NOT_MODULES.contains(&top.as_str()) {
                continue;
            }
            let mut used = uses(&code(&std::fs::read_to_string(&path).unwrap()));
            used.remove(&top);
            used.remove("install_tls_provider");
            modules.entry(top).or_default().extend(used);
        }
    }
    modules
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let picture = layers(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let height = picture.len();
    let level: BTreeMap<&str, usize> = picture
        .iter()
        .enumerate()
        .flat_map(|(i, line)| line.iter().map(move |m| (m.as_str(), height - i)))
        .collect();
    let modules = modules(&root.join("src"));
    assert!(modules.len() > 15, "the modules were found: {modules:?}");
    let mut wrong = Vec::new();
    for (module, used) in &modules {
        let Some(&own) = level.get(module.as_str()) else {
            wrong.push(format!("`{module}` is not in ARCHITECTURE.md's picture"));
            continue;
        };
        for dep in used {
            match level.get(dep.as_str()) {
                Some(&theirs) if theirs < own => {}
                Some(_) => wrong.push(format!("`{module}` uses `{dep}`, which is not on a line below it")),
                None if modules.contains_key(dep) => {
                    wrong.push(format!("`{dep}` (used by `{module}`) is not in the picture"))
                }
                None => {}
            }
        }
    }
    for name in level.keys() {
        if !modules.contains_key(*name) {
            wrong.push(format!("the picture names `{name}`, which is not a module of src/"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_uses_in_every_form() {
    let text = "use crate::config::{A, B};\nuse crate::{holder, relay::x, tunnel};\nlet t = crate::tuning::Tuning::default();\n// crate::engine in a comment\n";
    let found: Vec<String> = uses(&code(text)).into_iter().collect();
    assert_eq!(found, ["config", "holder", "relay", "tuning", "tunnel"]);
    let picture = layers("x\n<!-- layers -->\n```\ntop\nmid  other\nbottom\n```\n");
    assert_eq!(picture, [vec!["top"], vec!["mid", "other"], vec!["bottom"]]);
}
