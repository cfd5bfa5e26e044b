//! Edits of kubeconfig text: setting current-context byte for byte (every other byte kept:
//! comments, order, unknown fields, other users' tokens), and merging a cluster's fresh entries
//! the way `kind export kubeconfig` does. Each edit checks its own result before returning it.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("not valid YAML: {0}")]
    Parse(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the edit would change more than it should ({0}); nothing was written")]
    Unexpected(String),
}

const KEY: &str = "current-context";

/// Parses a kubeconfig document into a generic value (an empty document is an empty map).
pub fn parse(text: &str) -> Result<Value, EditError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_saphyr::from_str(text).map_err(|e| EditError::Parse(first_line(&e.to_string())))?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        _ => Err(EditError::Parse("the document is not a mapping".into())),
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_string()
}

/// Sets the top-level `current-context`, touching nothing else.
pub fn set_current_context(text: &str, context: &str) -> Result<String, EditError> {
    let before = parse(text)?;
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if first.is_some_and(|l| l.starts_with('{') || l.starts_with("---") || l.starts_with('?')) {
        return Err(EditError::Unsupported(
            "not a plain YAML mapping (JSON, a document marker or complex keys): use `kubectl config use-context`"
                .into(),
        ));
    }
    let found = top_level_lines(text, KEY);
    let edited = match found.as_slice() {
        [] => append(text, context),
        [(start, end)] => replace_value(text, *start, *end, context)?,
        _ => return Err(EditError::Parse(format!("`{KEY}` appears more than once"))),
    };
    // The input parsed: if the output does not, the edit is at fault, not the user's file.
    let after = parse(&edited).map_err(|e| EditError::Unexpected(e.to_string()))?;
    check_only_current_context_changed(&before, &after, context)?;
    Ok(edited)
}

/// Byte ranges of the lines that set `key` at the top level (no indentation).
fn top_level_lines(text: &str, key: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let bare = if start == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        let quoted = |q: char| {
            bare.strip_prefix(q)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(q))
        };
        let rest = quoted('"').or_else(|| quoted('\'')).or_else(|| bare.strip_prefix(key));
        if rest.is_some_and(|r| r.trim_start_matches([' ', '\t']).starts_with(':')) {
            found.push((start, end));
        }
        start = end;
    }
    found
}

fn replace_value(text: &str, start: usize, end: usize, context: &str) -> Result<String, EditError> {
    let line = &text[start..end];
    let bom = if line.starts_with('\u{feff}') { "\u{feff}" } else { "" };
    let colon = line.find(':').unwrap_or(0);
    let after_colon = &line[colon + 1..];
    let body = after_colon.trim_end_matches(['\n', '\r']);
    let ending = &after_colon[body.len()..];
    // A comment starts at a `#` after whitespace (a `#` inside a value is part of it).
    let comment_at = body
        .char_indices()
        .find(|(i, c)| *c == '#' && (*i == 0 || body[..*i].ends_with([' ', '\t'])));
    let (value, comment) = match comment_at {
        Some((i, _)) => body.split_at(i),
        None => (body, ""),
    };
    let trimmed = value.trim();
    if trimmed.starts_with(['|', '>', '&', '*', '!', '[', '{']) {
        return Err(EditError::Unsupported(format!(
            "`{KEY}: {trimmed}` is not a plain value; edit it by hand"
        )));
    }
    let spacing = if comment.is_empty() { "" } else { " " };
    Ok(format!(
        "{}{bom}{KEY}: {}{spacing}{comment}{ending}{}",
        &text[..start],
        scalar(context),
        &text[end..]
    ))
}

fn append(text: &str, context: &str) -> String {
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let separator = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        newline
    };
    format!("{text}{separator}{KEY}: {}{newline}", scalar(context))
}

/// A context name as a YAML scalar: plain when that is unambiguous, else double-quoted.
fn scalar(value: &str) -> String {
    let plain = value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '/'))
        && !matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        value.to_string()
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
    }
}

fn check_only_current_context_changed(before: &Value, after: &Value, context: &str) -> Result<(), EditError> {
    if after.get(KEY).and_then(Value::as_str) != Some(context) {
        return Err(EditError::Unexpected(format!("{KEY} did not become {context}")));
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.shift_remove(KEY);
        }
        v
    };
    if strip(before) != strip(after) {
        return Err(EditError::Unexpected("other fields changed".into()));
    }
    Ok(())
}

/// The names of a cluster's entries, as kind and k3d write them (`kind-NAME` for all three).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entries {
    pub cluster: String,
    pub user: String,
    pub context: String,
}

/// Merges the cluster, user and context of `fresh` (a `kind get kubeconfig` document) named by
/// `entries` into `text`: same-name entries replaced where they stand, new ones appended,
/// every other entry and field kept, current-context set to the context. Comments do not
/// survive a merge (kubectl and kind drop them too); everything else does.
pub fn merge(text: &str, fresh: &str, entries: &Entries) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let fresh = parse(fresh)?;
    let pick = |section: &str, name: &str| -> Result<Value, EditError> {
        fresh
            .get(section)
            .and_then(Value::as_array)
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
            })
            .cloned()
            .ok_or_else(|| EditError::Unexpected(format!("the fresh kubeconfig has no {section} entry `{name}`")))
    };
    let wanted = [
        ("clusters", pick("clusters", &entries.cluster)?),
        ("users", pick("users", &entries.user)?),
        ("contexts", pick("contexts", &entries.context)?),
    ];
    let map = doc
        .as_object_mut()
        .ok_or_else(|| EditError::Parse("the document is not a mapping".into()))?;
    for key in ["apiVersion", "kind"] {
        if !map.contains_key(key) {
            map.insert(
                key.into(),
                fresh.get(key).cloned().unwrap_or(Value::String(default_of(key).into())),
            );
        }
    }
    for (section, entry) in wanted {
        let items = map.entry(section).or_insert_with(|| Value::Array(Vec::new()));
        // kubectl writes an empty list as `null`.
        if items.is_null() {
            *items = Value::Array(Vec::new());
        }
        let items = items
            .as_array_mut()
            .ok_or_else(|| EditError::Parse(format!("`{section}` is not a list")))?;
        let name = entry.get("name").cloned();
        match items.iter_mut().find(|i| i.get("name") == name.as_ref()) {
            Some(existing) => *existing = entry,
            None => items.push(entry),
        }
    }
    map.insert(KEY.into(), Value::String(entries.context.clone()));
    // Plain scalars, as kubectl and kind write them: no folding of long certificate data.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    let merged =
        serde_saphyr::to_string_with_options(&doc, options).map_err(|e| EditError::Unexpected(e.to_string()))?;
    if parse(&merged).map_err(|e| EditError::Unexpected(e.to_string()))? != doc {
        return Err(EditError::Unexpected(
            "the merged document does not read back the same".into(),
        ));
    }
    Ok(merged)
}

fn default_of(key: &str) -> &'static str {
    if key == "kind" { "Config" } else { "v1" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COMMENTED: &str = "# my clusters, do not lose this comment\napiVersion: v1\nkind: Config\npreferences: {}\ncurrent-context: rancher-desktop   # switched by hand\nusers:\n- name: alice\n  user:\n    token: s3cr3t\nclusters:\n- name: rancher-desktop\n  cluster: {server: 'https://127.0.0.1:6443', x-unknown: keep-me}\ncontexts:\n- name: rancher-desktop\n  context: {cluster: rancher-desktop, user: alice}\nextensions-of-mine: [1, 2]\n";

    #[test]
    fn only_the_value_changes_byte_for_byte() {
        let edited = set_current_context(COMMENTED, "kind-openchoreo-local").unwrap();
        let expected = COMMENTED.replace(
            "current-context: rancher-desktop   # switched by hand",
            "current-context: kind-openchoreo-local # switched by hand",
        );
        assert_eq!(edited, expected);
    }

    #[test]
    fn crlf_quoted_keys_and_empty_values() {
        let text = "apiVersion: v1\r\n\"current-context\": \"\"\r\nkind: Config\r\n";
        assert_eq!(
            set_current_context(text, "kind-x").unwrap(),
            "apiVersion: v1\r\ncurrent-context: kind-x\r\nkind: Config\r\n"
        );
    }

    #[test]
    fn appended_when_absent_and_quoted_when_needed() {
        assert_eq!(
            set_current_context("kind: Config", "kind-x").unwrap(),
            "kind: Config\ncurrent-context: kind-x\n"
        );
        assert_eq!(set_current_context("", "yes").unwrap(), "current-context: \"yes\"\n");
        let odd = set_current_context("kind: Config\n", "a b: #c").unwrap();
        assert_eq!(parse(&odd).unwrap()["current-context"], "a b: #c");
    }

    #[test]
    fn bom_spaced_and_single_quoted_keys_and_json() {
        assert_eq!(
            set_current_context("\u{feff}current-context: a\n", "kind-x").unwrap(),
            "\u{feff}current-context: kind-x\n"
        );
        assert_eq!(
            set_current_context("current-context : a\nkind: Config\n", "kind-x").unwrap(),
            "current-context: kind-x\nkind: Config\n"
        );
        assert_eq!(
            set_current_context("'current-context': a\n", "kind-x").unwrap(),
            "current-context: kind-x\n"
        );
        let json = "{\n  \"kind\": \"Config\",\n  \"current-context\": \"a\"\n}\n";
        assert!(matches!(
            set_current_context(json, "kind-x"),
            Err(EditError::Unsupported(_))
        ));
        assert_eq!(
            set_current_context("kind: Config\r\n", "kind-x").unwrap(),
            "kind: Config\r\ncurrent-context: kind-x\r\n"
        );
    }

    #[test]
    fn merge_into_null_sections() {
        let fresh = "clusters:\n- name: kind-x\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: kind-x\n  user: {token: t}\ncontexts:\n- name: kind-x\n  context: {cluster: kind-x, user: kind-x}\n";
        let entries = Entries {
            cluster: "kind-x".into(),
            user: "kind-x".into(),
            context: "kind-x".into(),
        };
        let merged = parse(
            &merge(
                "apiVersion: v1\nclusters: null\nusers: null\ncontexts: null\n",
                fresh,
                &entries,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(merged["contexts"][0]["name"], "kind-x");
    }

    #[test]
    fn nested_current_context_keys_are_not_the_top_level_one() {
        let text = "kind: Config\npreferences:\n  current-context: not-this\n";
        let edited = set_current_context(text, "kind-x").unwrap();
        assert_eq!(edited, format!("{text}current-context: kind-x\n"));
    }

    #[test]
    fn malformed_input_is_an_error_with_its_line() {
        let err = set_current_context("kind: Config\nclusters: [\n  - a: b: c\n", "kind-x").unwrap_err();
        assert!(matches!(&err, EditError::Parse(m) if m.contains("line")), "{err}");
    }

    #[test]
    fn merge_replaces_same_name_entries_and_keeps_everything_else() {
        let fresh = "apiVersion: v1\nkind: Config\nclusters:\n- name: kind-x\n  cluster: {server: 'https://127.0.0.1:40000', certificate-authority-data: NEW}\nusers:\n- name: kind-x\n  user: {client-certificate-data: NEWCERT}\ncontexts:\n- name: kind-x\n  context: {cluster: kind-x, user: kind-x}\ncurrent-context: kind-x\n";
        let old = "apiVersion: v1\nkind: Config\ncurrent-context: rancher-desktop\nclusters:\n- name: kind-x\n  cluster: {server: 'https://127.0.0.1:39999', certificate-authority-data: OLD, extra: kept?}\n- name: rancher-desktop\n  cluster: {server: 'https://127.0.0.1:6443', x-unknown: keep-me}\nusers:\n- name: alice\n  user: {token: s3cr3t}\ncontexts: []\nmine: {a: 1}\n";
        let entries = Entries {
            cluster: "kind-x".into(),
            user: "kind-x".into(),
            context: "kind-x".into(),
        };
        let merged = parse(&merge(old, fresh, &entries).unwrap()).unwrap();
        assert_eq!(merged["current-context"], "kind-x");
        assert_eq!(
            merged["clusters"][0]["cluster"]["server"], "https://127.0.0.1:40000",
            "replaced in place"
        );
        assert!(
            merged["clusters"][0]["cluster"].get("extra").is_none(),
            "the entry is replaced whole, as kind does"
        );
        assert_eq!(merged["clusters"][1]["cluster"]["x-unknown"], "keep-me");
        assert_eq!(merged["users"][0]["user"]["token"], "s3cr3t");
        assert_eq!(merged["users"][1]["name"], "kind-x", "appended");
        assert_eq!(merged["contexts"][0]["context"]["cluster"], "kind-x");
        assert_eq!(merged["mine"]["a"], 1);
    }

    proptest! {
        /// Whatever the input: a clear error, or a document that parses and differs only in
        /// current-context.
        #[test]
        fn edits_change_only_current_context(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("apiVersion: v1".to_string()),
                    Just("current-context: old".to_string()),
                    Just("current-context: \"\"".to_string()),
                    Just("# comment: current-context: nope".to_string()),
                    Just("  current-context: nested".to_string()),
                    Just("clusters:".to_string()),
                    Just("- name: a".to_string()),
                    Just("  cluster: {server: 'https://x'}".to_string()),
                    "[a-z-]{1,8}: [a-z0-9#: '\"-]{0,12}",
                    "[ -~]{0,20}",
                ],
                0..12,
            ),
            crlf in any::<bool>(),
            context in "[a-zA-Z0-9:@ #._-]{1,16}",
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            match set_current_context(&text, &context) {
                Err(_) => {}
                Ok(edited) => {
                    let before = parse(&text).unwrap();
                    let after = parse(&edited).unwrap();
                    prop_assert_eq!(after["current-context"].as_str(), Some(context.as_str()));
                    let (mut b, mut a) = (before, after);
                    b.as_object_mut().unwrap().shift_remove("current-context");
                    a.as_object_mut().unwrap().shift_remove("current-context");
                    prop_assert_eq!(b, a);
                }
            }
        }
    }
}
