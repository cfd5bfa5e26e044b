//! Label and field selectors as the API server parses the `labelSelector` and
//! `fieldSelector` query parameters (equality, inequality and existence terms).

use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Op {
    Equals(String),
    NotEquals(String),
    Exists,
    NotExists,
}

/// A conjunction of terms; the empty selector matches everything.
#[derive(Debug, Default)]
pub struct Selector {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, Op)>,
}

impl Selector {
    /// Parses both selectors; the error is the message of the API server's 400 answer.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let labels = parse_terms(labels.unwrap_or(""))?;
        let fields = parse_terms(fields.unwrap_or(""))?;
        for (field, op) in &fields {
            if !matches!(field.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {field}"));
            }
            if matches!(op, Op::Exists | Op::NotExists) {
                return Err(format!("invalid field selector: {field}"));
            }
        }
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let labels_ok = self
            .labels
            .iter()
            .all(|(key, op)| holds(op, meta["labels"].get(key).and_then(Value::as_str)));
        let fields_ok = self.fields.iter().all(|(field, op)| {
            let value = match field.as_str() {
                "metadata.name" => meta["name"].as_str().unwrap_or(""),
                _ => meta["namespace"].as_str().unwrap_or(""),
            };
            holds(op, Some(value))
        });
        labels_ok && fields_ok
    }
}

fn holds(op: &Op, value: Option<&str>) -> bool {
    match op {
        Op::Equals(want) => value == Some(want.as_str()),
        Op::NotEquals(want) => value != Some(want.as_str()),
        Op::Exists => value.is_some(),
        Op::NotExists => value.is_none(),
    }
}

fn parse_terms(selector: &str) -> Result<Vec<(String, Op)>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let parsed = if let Some((k, v)) = term.split_once("!=") {
            (k, Op::NotEquals(v.trim().to_string()))
        } else if let Some((k, v)) = term.split_once("==") {
            (k, Op::Equals(v.trim().to_string()))
        } else if let Some((k, v)) = term.split_once('=') {
            (k, Op::Equals(v.trim().to_string()))
        } else if let Some(k) = term.strip_prefix('!') {
            (k, Op::NotExists)
        } else if term.contains([' ', '(', ')']) {
            return Err(format!("unable to parse requirement: {term}"));
        } else {
            (term, Op::Exists)
        };
        terms.push((parsed.0.trim().to_string(), parsed.1));
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::Selector;
    use serde_json::json;

    #[test]
    fn equality_inequality_and_existence() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "tier": ""}}});
        let sel = |l: &str, f: &str| Selector::parse(Some(l), Some(f)).unwrap().matches(&obj);
        assert!(sel("app=web", ""));
        assert!(sel("app==web,tier", ""));
        assert!(!sel("app!=web", ""));
        assert!(sel("!missing", "metadata.name=a"));
        assert!(!sel("", "metadata.namespace=other"));
        assert!(Selector::parse(None, Some("spec.type=NodePort")).is_err());
    }
}
