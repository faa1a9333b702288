//! Adding the gateway as a model to Continue's `config.yaml` by inserting
//! lines, so the user's comments and layout stay as they were; the result
//! is parsed before it is written.

use saphyr_parser::{Event, Parser};

/// Why the Continue config could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum ContinueYamlError {
    #[error("not valid YAML: {0}")]
    Invalid(String),
    #[error(
        "`models:` is written in flow style (`[...]`); add the entry printed below to it by hand"
    )]
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

/// `text` with the gateway model added (`None` when an entry of
/// `models:` already asks this `apiBase` for this `model`). Absent or
/// empty text gives a new file.
///
/// An entry for the gateway with another model does not count: a user
/// who runs `kt setup continue --model claude-sonnet-4` next to an
/// existing `gpt-4o` entry wants both (before, the second model was
/// never added and kt said "already up to date").
pub fn add_model(text: &str, model: &ContinueModel) -> Result<Option<String>, ContinueYamlError> {
    let entries = model_entries(text)?;
    if text.trim().is_empty() {
        return Ok(Some(model.new_file()));
    }
    let base = model.api_base.trim_end_matches('/');
    if entries.iter().any(|e| {
        e.model.as_deref() == Some(model.model.as_str())
            && e.api_base.as_deref().map(|b| b.trim_end_matches('/')) == Some(base)
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
    model_entries(text).map(drop)
}

/// What one item of the top-level `models:` list says.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    model: Option<String>,
    api_base: Option<String>,
}

/// A node of the document, as far as finding the entries needs: scalars
/// by their value (quoted or not), anything else opaque. Aliases are not
/// followed (an entry written as `*anchor` is not recognised, at worst
/// giving a second kt entry) so a small file cannot expand into a huge
/// tree.
enum Node {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Other,
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            // The last of a repeated key, as YAML readers that allow
            // repeats keep it.
            Node::Map(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Node::Scalar(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn scalar(&self) -> Option<String> {
        match self {
            Node::Scalar(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// A list or mapping being read: a mapping's key waits for its value.
enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

/// The items of the top-level `models:` list; an error for text that is
/// not valid YAML.
fn model_entries(text: &str) -> Result<Vec<Entry>, ContinueYamlError> {
    // Built with an explicit stack, not recursion: nesting depth is the
    // file's to choose.
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    for event in Parser::new_from_str(text) {
        let (event, _) = event.map_err(|e| {
            let m = e.marker();
            ContinueYamlError::Invalid(format!(
                "line {} column {}: {}",
                m.line(),
                m.col() + 1,
                e.info()
            ))
        })?;
        let done = match event {
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(Vec::new()));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(Vec::new(), None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items)) => Node::Seq(items),
                Some(Frame::Map(entries, _)) => Node::Map(entries),
                None => continue,
            },
            Event::Scalar(value, ..) => Node::Scalar(value.into_owned()),
            Event::Alias(_) => Node::Other,
            _ => continue,
        };
        match stack.last_mut() {
            Some(Frame::Seq(items)) => items.push(done),
            Some(Frame::Map(entries, key)) => match key.take() {
                Some(k) => entries.push((k, done)),
                None => *key = Some(done),
            },
            // Only the first document's root counts.
            None => {
                root.get_or_insert(done);
            }
        }
    }
    let Some(Node::Seq(items)) = root.as_ref().and_then(|r| r.get("models")) else {
        return Ok(Vec::new());
    };
    Ok(items
        .iter()
        .map(|item| Entry {
            model: item.get("model").and_then(Node::scalar),
            api_base: item.get("apiBase").and_then(Node::scalar),
        })
        .collect())
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

    /// A kt entry for another model: before, any entry with the
    /// gateway's `apiBase` made every model "already up to date".
    #[test]
    fn another_model_through_the_gateway_is_added_beside_the_first() {
        let first = add_model("", &model()).unwrap().unwrap();
        let claude = ContinueModel {
            name: "kt gateway (claude-sonnet-4)".into(),
            model: "claude-sonnet-4".into(),
            api_base: "http://localhost:41002/v1".into(),
        };
        let both = add_model(&first, &claude).unwrap().unwrap();
        assert!(both.contains("    model: claude-sonnet-4\n"), "{both}");
        assert!(both.contains("    model: gpt-4o\n"), "{both}");
        assert_eq!(
            both.matches("apiBase: http://localhost:41002/v1").count(),
            2
        );
        assert_eq!(add_model(&both, &claude).unwrap(), None, "idempotent");
        assert_eq!(add_model(&both, &model()).unwrap(), None);
    }

    /// The same entry written by hand, quoted, in flow style or with a
    /// trailing slash is the same entry; the model of another provider
    /// (another `apiBase`) is not.
    #[test]
    fn an_identical_entry_is_recognised_however_it_is_written() {
        for text in [
            "models:\n  - name: mine\n    provider: openai\n    model: \"gpt-4o\"\n    apiBase: 'http://localhost:41002/v1/'\n",
            "models:\n  - {name: mine, model: gpt-4o, apiBase: \"http://localhost:41002/v1\"}\n",
        ] {
            assert_eq!(add_model(text, &model()).unwrap(), None, "{text}");
        }
        let elsewhere = "models:\n  - name: openai\n    provider: openai\n    model: gpt-4o\n    apiBase: https://api.openai.com/v1\n";
        assert!(add_model(elsewhere, &model()).unwrap().is_some());
        // `apiBase` outside `models:` says nothing about the models.
        let unrelated = "context:\n  - provider: x\n    model: gpt-4o\n    apiBase: http://localhost:41002/v1\nmodels: []\n";
        assert!(add_model(unrelated, &model()).unwrap().is_some());
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
