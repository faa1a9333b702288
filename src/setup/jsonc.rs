//! Setting keys in a JSON-with-comments settings file (VS Code, Zed)
//! without disturbing anything else in it: comments, trailing commas,
//! key order and formatting are kept; only the named keys change.

use jsonc_parser::cst::{CstInputValue, CstObject, CstObjectProp, CstRootNode};
use jsonc_parser::ParseOptions;
use serde_json::Value;

/// Why a settings file could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum JsoncError {
    #[error("not valid JSON (with comments): {0}")]
    Parse(String),
    #[error("the top level is not an object")]
    NotAnObject,
    #[error("`{key}` is set to something other than an object; fix or remove it first")]
    NotAnObjectAt { key: String },
}

/// One key to set: `path` names nested objects, e.g. `["language_models",
/// "openai", "api_url"]`; VS Code's dotted keys are one element
/// (`["http.proxy"]`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonEdit {
    pub path: Vec<String>,
    pub value: Value,
}

impl JsonEdit {
    pub fn new(path: &[&str], value: Value) -> JsonEdit {
        JsonEdit {
            path: path.iter().map(|s| s.to_string()).collect(),
            value,
        }
    }

    /// The key path as users read it: `language_models.openai.api_url`.
    pub fn key(&self) -> String {
        self.path.join(" > ")
    }
}

/// What an edit did.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonChange {
    pub key: String,
    /// The previous value; `None` when the key was added.
    pub old: Option<Value>,
    pub new: Value,
}

/// Applies `edits` to `text`, returning the new text and the edits that
/// changed something (keys already holding the value are left untouched,
/// so a second run changes nothing). Empty text is treated as `{}`.
pub fn apply(text: &str, edits: &[JsonEdit]) -> Result<(String, Vec<JsonChange>), JsoncError> {
    // Notepad and some Windows tools start UTF-8 files with a byte order
    // mark, which VS Code and Zed read past but the parser refuses as a
    // stray character: it is set aside here and put back on the output.
    let (bom, body) = split_bom(text);
    let source = if body.trim().is_empty() { "{}\n" } else { body };
    let root = CstRootNode::parse(source, &ParseOptions::default())
        .map_err(|e| JsoncError::Parse(e.to_string()))?;
    let object = match root.value() {
        None => root.object_value_or_set(),
        Some(_) => root.object_value().ok_or(JsoncError::NotAnObject)?,
    };
    let mut changes = Vec::new();
    for edit in edits {
        if let Some(change) = set(&object, edit)? {
            changes.push(change);
        }
    }
    if changes.is_empty() {
        return Ok((text.to_string(), changes));
    }
    let mut out = bom.to_string();
    out.push_str(&root.to_string());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok((out, changes))
}

/// `text`'s leading UTF-8 byte order mark (or "") and the rest.
fn split_bom(text: &str) -> (&str, &str) {
    match text.strip_prefix('\u{FEFF}') {
        Some(rest) => ("\u{FEFF}", rest),
        None => ("", text),
    }
}

fn set(top: &CstObject, edit: &JsonEdit) -> Result<Option<JsonChange>, JsoncError> {
    let Some((last, parents)) = edit.path.split_last() else {
        return Ok(None);
    };
    let mut object = top.clone();
    let mut walked = Vec::new();
    for name in parents {
        walked.push(name.as_str());
        let found = match last_prop(&object, name) {
            Some(prop) => prop.object_value(),
            None => object.object_value_or_create(name),
        };
        object = found.ok_or_else(|| JsoncError::NotAnObjectAt {
            key: walked.join(" > "),
        })?;
    }
    let input = to_input(&edit.value);
    match last_prop(&object, last) {
        Some(prop) => {
            let old = prop.value().and_then(|v| v.to_serde_value());
            if old.as_ref() == Some(&edit.value) {
                return Ok(None);
            }
            prop.set_value(input);
            Ok(Some(JsonChange {
                key: edit.key(),
                old,
                new: edit.value.clone(),
            }))
        }
        None => {
            object.append(last, input);
            Ok(Some(JsonChange {
                key: edit.key(),
                old: None,
                new: edit.value.clone(),
            }))
        }
    }
}

/// The property `name` of `object`; the last one when the key is there
/// more than once, as VS Code (and `get`) read it. The CST's own `get`
/// returns the first, which is ignored: kt changed a line nothing reads.
fn last_prop(object: &CstObject, name: &str) -> Option<CstObjectProp> {
    object
        .properties()
        .into_iter()
        .rev()
        .find(|p| p.decoded_name().as_deref() == Some(name))
}

fn to_input(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(a) => CstInputValue::Array(a.iter().map(to_input).collect()),
        Value::Object(o) => {
            CstInputValue::Object(o.iter().map(|(k, v)| (k.clone(), to_input(v))).collect())
        }
    }
}

/// The value `text` holds at `path`, if it parses and has one.
pub fn get(text: &str, path: &[&str]) -> Option<Value> {
    let value = CstRootNode::parse(split_bom(text).1, &ParseOptions::default())
        .ok()?
        .value()?
        .to_serde_value()?;
    path.iter().try_fold(&value, |v, key| v.get(key)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VSCODE: &str = r#"{
    // Editor
    "editor.fontSize": 14, // big enough
    /* a block comment
       over two lines */
    "files.exclude": {
        "**/.git": true,
    },
    "http.proxy": "http://old-proxy:3128",
}
"#;

    fn proxy_edits() -> Vec<JsonEdit> {
        vec![
            JsonEdit::new(&["http.proxy"], json!("http://127.0.0.1:41002")),
            JsonEdit::new(&["http.proxyStrictSSL"], json!(true)),
        ]
    }

    #[test]
    fn keeps_comments_trailing_commas_and_other_keys() {
        let (out, changes) = apply(VSCODE, &proxy_edits()).unwrap();
        for kept in [
            "// Editor",
            "\"editor.fontSize\": 14, // big enough",
            "/* a block comment\n       over two lines */",
            "\"**/.git\": true,",
        ] {
            assert!(out.contains(kept), "lost {kept:?} in:\n{out}");
        }
        assert_eq!(
            get(&out, &["http.proxy"]),
            Some(json!("http://127.0.0.1:41002"))
        );
        assert_eq!(get(&out, &["http.proxyStrictSSL"]), Some(json!(true)));
        assert_eq!(get(&out, &["editor.fontSize"]), Some(json!(14)));
        assert!(!out.contains("old-proxy"));
        assert_eq!(
            changes,
            vec![
                JsonChange {
                    key: "http.proxy".into(),
                    old: Some(json!("http://old-proxy:3128")),
                    new: json!("http://127.0.0.1:41002"),
                },
                JsonChange {
                    key: "http.proxyStrictSSL".into(),
                    old: None,
                    new: json!(true),
                },
            ]
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let (once, _) = apply(VSCODE, &proxy_edits()).unwrap();
        let (twice, changes) = apply(&once, &proxy_edits()).unwrap();
        assert!(changes.is_empty());
        assert_eq!(once, twice);
    }

    #[test]
    fn nested_keys_are_created_or_merged() {
        let edit = [JsonEdit::new(
            &["language_models", "openai", "api_url"],
            json!("http://localhost:41002/v1"),
        )];
        let (out, _) = apply("", &edit).unwrap();
        assert_eq!(
            get(&out, &["language_models", "openai", "api_url"]),
            Some(json!("http://localhost:41002/v1"))
        );
        let zed = "// Zed settings\n{\n  \"theme\": \"One Dark\",\n  \"language_models\": {\n    \"openai\": { \"available_models\": [] },\n    \"anthropic\": {}\n  }\n}\n";
        let (out, changes) = apply(zed, &edit).unwrap();
        assert!(out.starts_with("// Zed settings\n"));
        assert_eq!(changes.len(), 1);
        assert_eq!(
            get(&out, &["language_models", "openai", "available_models"]),
            Some(json!([]))
        );
        assert_eq!(
            get(&out, &["language_models", "anthropic"]),
            Some(json!({}))
        );
        assert_eq!(get(&out, &["theme"]), Some(json!("One Dark")));
    }

    /// A key set twice: VS Code uses the last, so that is the one kt
    /// changes and reports (before, it edited the first and said the
    /// proxy was set while VS Code kept the old one).
    #[test]
    fn a_duplicate_key_is_edited_where_it_counts() {
        let twice = "{\n  \"http.proxy\": \"http://first:1\",\n  \"http.proxy\": \"http://last:2\",\n  \"lm\": {\"a\": 1},\n  \"lm\": {\"b\": 2}\n}\n";
        let edits = [
            JsonEdit::new(&["http.proxy"], json!("http://127.0.0.1:41002")),
            JsonEdit::new(&["lm", "url"], json!("u")),
        ];
        let (out, changes) = apply(twice, &edits).unwrap();
        assert_eq!(
            get(&out, &["http.proxy"]),
            Some(json!("http://127.0.0.1:41002")),
            "{out}"
        );
        assert_eq!(changes[0].old, Some(json!("http://last:2")));
        assert_eq!(
            get(&out, &["lm"]),
            Some(json!({"b": 2, "url": "u"})),
            "{out}"
        );
        let (again, changes) = apply(&out, &edits).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(again, out);
    }

    /// A file saved with a byte order mark (Notepad): before, it was
    /// refused as invalid JSON; now it is merged and keeps its mark.
    #[test]
    fn a_leading_byte_order_mark_is_kept_and_not_an_error() {
        let text = "\u{FEFF}{\"a\":1}\n";
        let (out, changes) = apply(text, &proxy_edits()).unwrap();
        assert_eq!(changes.len(), 2);
        assert!(out.starts_with("\u{FEFF}{"), "{out:?}");
        assert_eq!(out.matches('\u{FEFF}').count(), 1, "{out:?}");
        assert_eq!(get(&out, &["a"]), Some(json!(1)));
        assert_eq!(
            get(&out, &["http.proxy"]),
            Some(json!("http://127.0.0.1:41002"))
        );
        let (again, changes) = apply(&out, &proxy_edits()).unwrap();
        assert!(changes.is_empty());
        assert_eq!(again, out);
        // A file that is only the mark is as good as empty.
        let (out, _) = apply("\u{FEFF}", &proxy_edits()).unwrap();
        assert!(out.starts_with("\u{FEFF}{"), "{out:?}");
    }

    #[test]
    fn refuses_what_it_cannot_merge_safely() {
        assert!(matches!(
            apply("[1, 2]", &proxy_edits()),
            Err(JsoncError::NotAnObject)
        ));
        assert!(matches!(
            apply("{ \"a\": ", &proxy_edits()),
            Err(JsoncError::Parse(_))
        ));
        let edit = [JsonEdit::new(
            &["language_models", "openai", "api_url"],
            json!("x"),
        )];
        assert!(matches!(
            apply("{\"language_models\": 3}", &edit),
            Err(JsoncError::NotAnObjectAt { key }) if key == "language_models"
        ));
    }
}
