//! Adding the gateway as a model to Continue's `config.yaml` by inserting
//! lines, so the user's comments and layout stay as they were; the result
//! is parsed before it is written.

use saphyr_parser::Parser;

/// Why the Continue config could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum ContinueYamlError {
    #[error("not valid YAML: {0}")]
    Invalid(String),
    #[error("`models:` is written in flow style (`[...]`); add this entry by hand:\n{0}")]
    FlowModels(String),
}

/// The model entry for the gateway: an OpenAI-compatible provider whose
/// `apiBase` is the gateway's direct API.
#[derive(Debug, Clone)]
pub struct ContinueModel {
    pub name: String,
    pub model: String,
    pub api_base: String,
}

impl ContinueModel {
    /// The entry as a YAML sequence item indented by `indent` spaces.
    pub fn item(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        format!(
            "{pad}- name: {name}\n\
             {pad}  provider: openai\n\
             {pad}  model: {model}\n\
             {pad}  apiBase: {base}\n\
             {pad}  # apiKey: a kt access key, when the gateway requires one\n\
             {pad}  roles: [chat, edit, apply, autocomplete]\n",
            name = yaml_scalar(&self.name),
            model = yaml_scalar(&self.model),
            base = yaml_scalar(&self.api_base),
        )
    }

    /// The entry as Continue's older `config.json` writes a model.
    pub fn json_entry(&self) -> String {
        let entry = serde_json::json!({
            "title": self.name,
            "provider": "openai",
            "model": self.model,
            "apiBase": self.api_base,
        });
        serde_json::to_string_pretty(&entry).unwrap_or_default()
    }

    /// A whole new `config.yaml` holding only this model.
    pub fn new_file(&self) -> String {
        format!(
            "name: Local Assistant\nversion: 1.0.0\nschema: v1\nmodels:\n{}",
            self.item(2)
        )
    }
}

/// `text` with the gateway model added (`None` when a model with this
/// `apiBase` is already there). Absent or empty text gives a new file.
pub fn add_model(text: &str, model: &ContinueModel) -> Result<Option<String>, ContinueYamlError> {
    check(text)?;
    if text.trim().is_empty() {
        return Ok(Some(model.new_file()));
    }
    let wanted = yaml_scalar(&model.api_base);
    if text.lines().any(|l| {
        l.trim_start().strip_prefix("apiBase:").is_some_and(|v| {
            v.trim().trim_matches(['"', '\'']) == model.api_base || v.trim() == wanted
        })
    }) {
        return Ok(None);
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let models_at = lines.iter().position(|l| l.starts_with("models:"));
    let mut out = String::with_capacity(text.len() + 256);
    match models_at {
        Some(i) => {
            let rest = lines[i]["models:".len()..].trim();
            let empty_flow = rest == "[]";
            if !(rest.is_empty() || rest.starts_with('#') || empty_flow) {
                return Err(ContinueYamlError::FlowModels(model.item(2)));
            }
            let indent = if empty_flow {
                2
            } else {
                item_indent(&lines[i + 1..]).unwrap_or(2)
            };
            for l in &lines[..i] {
                out.push_str(l);
            }
            out.push_str(if empty_flow { "models:\n" } else { lines[i] });
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&model.item(indent));
            for l in &lines[i + 1..] {
                out.push_str(l);
            }
        }
        None => {
            out.push_str(text);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("models:\n");
            out.push_str(&model.item(2));
        }
    }
    check(&out)?;
    Ok(Some(out))
}

/// The indentation of the first `- ` item in the block after `models:`.
fn item_indent(rest: &[&str]) -> Option<usize> {
    rest.iter()
        .map(|l| l.trim_end_matches(['\n', '\r']))
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .and_then(|l| {
            let indent = l.len() - l.trim_start().len();
            l.trim_start().starts_with('-').then_some(indent)
        })
}

fn check(text: &str) -> Result<(), ContinueYamlError> {
    for event in Parser::new_from_str(text) {
        if let Err(e) = event {
            let m = e.marker();
            return Err(ContinueYamlError::Invalid(format!(
                "line {} column {}: {}",
                m.line(),
                m.col() + 1,
                e.info()
            )));
        }
    }
    Ok(())
}

/// A plain scalar when safe, else a double-quoted one.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:()".contains(c) || c == ' ')
        && !s.starts_with([' ', '-', ':'])
        && !s.ends_with(' ')
        && !s.contains(": ");
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ContinueModel {
        ContinueModel {
            name: "kt gateway".into(),
            model: "gpt-4o".into(),
            api_base: "http://localhost:41002/v1".into(),
        }
    }

    #[test]
    fn a_new_file_is_a_complete_config() {
        let out = add_model("", &model()).unwrap().unwrap();
        assert!(out.starts_with("name: Local Assistant\nversion: 1.0.0\nschema: v1\nmodels:\n  - name: kt gateway\n    provider: openai\n"));
        assert!(out.contains("    apiBase: http://localhost:41002/v1\n"));
        assert_eq!(add_model(&out, &model()).unwrap(), None, "idempotent");
    }

    #[test]
    fn inserts_into_an_existing_block_keeping_comments() {
        let text = "# my assistant\nname: Mine\nmodels:\n    # the local one\n    - name: Llama\n      provider: ollama\n      model: llama3\ncontext:\n  - provider: code\n";
        let out = add_model(text, &model()).unwrap().unwrap();
        assert!(out.starts_with("# my assistant\nname: Mine\nmodels:\n    - name: kt gateway\n"));
        assert!(out.contains("    # the local one\n    - name: Llama\n"));
        assert!(out.ends_with("context:\n  - provider: code\n"));
        assert_eq!(add_model(&out, &model()).unwrap(), None);
    }

    #[test]
    fn adds_a_models_block_when_there_is_none_or_it_is_empty() {
        let out = add_model("name: Mine\n", &model()).unwrap().unwrap();
        assert!(out.starts_with("name: Mine\nmodels:\n  - name: kt gateway\n"));
        let out = add_model("name: Mine\nmodels: []\n", &model())
            .unwrap()
            .unwrap();
        assert!(out.starts_with("name: Mine\nmodels:\n  - name: kt gateway\n"));
    }

    #[test]
    fn refuses_invalid_yaml_and_flow_lists() {
        assert!(matches!(
            add_model("models: [\n", &model()),
            Err(ContinueYamlError::Invalid(_))
        ));
        assert!(matches!(
            add_model("models: [{name: a}]\n", &model()),
            Err(ContinueYamlError::FlowModels(_))
        ));
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar("gpt-4o"), "gpt-4o");
    }
}
