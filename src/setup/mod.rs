//! Client settings that point IDEs, assistants and shells at the gateway
//! (`kt setup`): what each client needs, where its settings file lives,
//! and merging the settings into that file without losing anything.
//!
//! - [`jsonc`]: keys set in JSON-with-comments files (VS Code, Zed).
//! - [`continue_yaml`]: a model added to Continue's `config.yaml`.
//! - [`files`]: backups, atomic replacement, marked blocks (shell, elisp).

pub mod continue_yaml;
pub mod files;
pub mod jsonc;

use continue_yaml::{ContinueModel, ContinueYamlError};
use files::{FileError, UnclosedBlock};
use jsonc::{JsonChange, JsonEdit, JsoncError};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Hosts kept off the proxy: the gateway itself on loopback (the direct
/// API would otherwise be proxied to itself) and package registries, whose
/// downloads gain nothing from the gateway.
pub const NO_PROXY_HOSTS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
];

/// The clients `kt setup` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// VS Code: proxy settings and CA trust.
    Vscode,
    /// Sourcegraph Cody in VS Code.
    Cody,
    /// GitHub Copilot in VS Code (through VS Code's proxy).
    Copilot,
    /// Continue: the gateway's direct API as an OpenAI-compatible model.
    Continue,
    /// Zed: the OpenAI provider's API URL.
    Zed,
    /// Emacs gptel: an OpenAI-compatible backend.
    Gptel,
    /// A POSIX shell profile: proxy variables and Node's CA variable.
    Shell,
}

/// What the settings are computed from.
#[derive(Debug, Clone)]
pub struct SetupContext {
    /// The gateway as clients reach it, e.g. `http://127.0.0.1:41002`.
    pub gateway: String,
    /// The kt CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The model the OpenAI-compatible clients ask for.
    pub model: String,
    /// The user's home folder, for default file locations.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, where VS Code and Zed keep their settings on
    /// Linux when it is set (read by the caller, so tests pass their own).
    pub xdg_config_home: Option<PathBuf>,
}

impl SetupContext {
    /// `host:port` of the gateway URL.
    pub fn host_port(&self) -> &str {
        let rest = self
            .gateway
            .split_once("://")
            .map_or(self.gateway.as_str(), |(_, r)| r);
        let rest = rest.split('/').next().unwrap_or(rest);
        rest.rsplit_once('@').map_or(rest, |(_, h)| h)
    }

    /// `https` for a gateway reached over TLS (behind a reverse proxy),
    /// else `http`.
    pub fn scheme(&self) -> &'static str {
        let https = self
            .gateway
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        if https {
            "https"
        } else {
            "http"
        }
    }

    /// The direct API's base URL (`<gateway>/v1`).
    pub fn api_base(&self) -> String {
        format!("{}/v1", self.gateway.trim_end_matches('/'))
    }
}

impl SetupError {
    /// The settings a user must add by hand when kt could not, printed
    /// after the (one-line) error.
    pub fn manual_entry(&self) -> Option<&str> {
        match self {
            SetupError::ContinueJson { entry, .. } => Some(entry),
            SetupError::ContinueYaml {
                source: ContinueYamlError::FlowModels(entry),
                ..
            } => Some(entry),
            _ => None,
        }
    }
}

/// Why `kt setup --write` failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: JsoncError },
    #[error("{path}: {source}")]
    ContinueYaml {
        path: PathBuf,
        source: ContinueYamlError,
    },
    #[error("{path}: {source}")]
    Block {
        path: PathBuf,
        source: UnclosedBlock,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{} holds your Continue settings and {} does not exist: Continue reads config.yaml instead of config.json once it exists, so creating it would hide your models; add the entry printed below to the \"models\" list of {} instead",
        .json.display(), .yaml.display(), .json.display()
    )]
    ContinueJson {
        json: PathBuf,
        yaml: PathBuf,
        entry: String,
    },
    #[error(
        "{} does not exist, so {client:?} does not seem to be installed for this user (or it keeps its settings elsewhere); kt creates no folder for it: pass --file with the settings file to write",
        .dir.display()
    )]
    NoSettingsFolder { client: Client, dir: PathBuf },
    #[error("{client:?} has no standard settings file; pass --file (e.g. {example})")]
    NoDefaultFile {
        client: Client,
        example: &'static str,
    },
}

/// What a client's settings file gets.
#[derive(Debug, Clone)]
pub enum Settings {
    /// Keys in a JSON-with-comments file.
    Json(Vec<JsonEdit>),
    /// A model in Continue's `config.yaml`.
    Continue(ContinueModel),
    /// A marked block of text in a file whose comments start with `comment`.
    Block { comment: &'static str, body: String },
}

/// Everything `kt setup CLIENT` prints or writes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub client: Client,
    pub settings: Settings,
    /// Where the settings go unless `--file` says otherwise.
    pub default_file: Option<PathBuf>,
    /// Guidance printed after the settings.
    pub notes: Vec<String>,
}

/// The outcome of writing a plan into a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub file: PathBuf,
    /// The copy of the previous file, when there was one and it changed.
    pub backup: Option<PathBuf>,
    /// One line per change, for the user; empty when nothing changed.
    pub changes: Vec<String>,
}

/// The plan for `client`.
pub fn plan(client: Client, ctx: &SetupContext) -> Plan {
    let ca = ctx.ca_cert.display().to_string();
    let ca_note = format!(
        "trust the kt CA: run `kt ca install` (OS store; VS Code on Linux reads the system bundle), or start the editor from a shell with NODE_EXTRA_CA_CERTS={ca}"
    );
    let auth_note = format!(
        "if the gateway requires access keys, put one in the proxy URL: http://USER:KEY@{}",
        ctx.host_port()
    );
    let vscode_keys = || {
        vec![
            JsonEdit::new(&["http.proxy"], json!(ctx.gateway)),
            JsonEdit::new(&["http.proxySupport"], json!("override")),
            // Never turned off: the kt CA is trusted instead.
            JsonEdit::new(&["http.proxyStrictSSL"], json!(true)),
            JsonEdit::new(&["http.systemCertificates"], json!(true)),
        ]
    };
    let vscode_file = vscode_settings(ctx.home.as_deref(), ctx.xdg_config_home.as_deref());
    match client {
        Client::Vscode => Plan {
            client,
            settings: Settings::Json(vscode_keys()),
            default_file: vscode_file,
            notes: vec![ca_note, auth_note, RESTART.into()],
        },
        Client::Copilot => Plan {
            client,
            settings: Settings::Json(vscode_keys()),
            default_file: vscode_file,
            notes: vec![
                "Copilot has no custom endpoint: it follows VS Code's proxy, and kt intercepts *.githubcopilot.com; your own Copilot sign-in passes through untouched".into(),
                ca_note,
                auth_note,
                "JetBrains IDEs: Settings > Appearance & Behavior > System Settings > HTTP Proxy (manual, host and port above), and import the CA under Settings > Tools > Server Certificates".into(),
                "Copilot in Neovim or the CLI: `kt setup shell` (HTTPS_PROXY and NODE_EXTRA_CA_CERTS)".into(),
                RESTART.into(),
            ],
        },
        Client::Cody => {
            let mut keys = vscode_keys();
            keys.push(JsonEdit::new(&["cody.net.proxy.endpoint"], json!(ctx.gateway)));
            keys.push(JsonEdit::new(&["cody.net.proxy.cacert"], json!(ca)));
            Plan {
                client,
                settings: Settings::Json(keys),
                default_file: vscode_file,
                notes: vec![
                    "Cody talks to sourcegraph.com / cody-gateway.sourcegraph.com, which kt intercepts; self-hosted instances: add their host under `intercept.hosts` in the policy config".into(),
                    format!(
                        "Cody Enterprise: an admin can instead point the instance's site config `completions.endpoint` at the gateway's direct API ({}), with the OpenAI-compatible provider",
                        ctx.api_base()
                    ),
                    ca_note,
                    auth_note,
                    RESTART.into(),
                ],
            }
        }
        Client::Continue => Plan {
            client,
            settings: Settings::Continue(ContinueModel {
                name: format!("kt gateway ({})", ctx.model),
                model: ctx.model.clone(),
                api_base: ctx.api_base(),
            }),
            default_file: ctx.home.as_ref().map(|h| h.join(".continue/config.yaml")),
            notes: vec![
                if ctx.scheme() == "https" {
                    "Continue reaches the gateway's direct API itself: no proxy setting is needed".into()
                } else {
                    "the direct API is plain HTTP on this machine: no proxy or CA setting is needed".into()
                },
                "if the gateway requires access keys, set the model's `apiKey` to a kt access key (`kt keys create --user NAME`)".into(),
            ],
        },
        Client::Zed => Plan {
            client,
            settings: Settings::Json(vec![JsonEdit::new(
                &["language_models", "openai", "api_url"],
                json!(ctx.api_base()),
            )]),
            default_file: zed_settings(ctx.home.as_deref(), ctx.xdg_config_home.as_deref()),
            notes: vec![
                "Zed sends the OpenAI API key you enter in its Agent settings; with access keys required, enter a kt access key there".into(),
            ],
        },
        Client::Gptel => Plan {
            client,
            settings: Settings::Block {
                comment: ";;",
                body: gptel_elisp(ctx),
            },
            default_file: None,
            notes: vec![
                "evaluate it (or restart Emacs); KEEPTRUSTS_ACCESS_KEY is sent as the key when set".into(),
            ],
        },
        Client::Shell => Plan {
            client,
            settings: Settings::Block {
                comment: "#",
                body: shell_exports(ctx),
            },
            default_file: None,
            notes: vec![
                "programs read these when they start: open a new shell, and start editors from it".into(),
            ],
        },
    }
}

const RESTART: &str = "restart VS Code after changing its settings";

fn shell_exports(ctx: &SetupContext) -> String {
    let no_proxy = NO_PROXY_HOSTS.join(",");
    let gw = &ctx.gateway;
    // curl reads only the lowercase http_proxy; other tools read either.
    format!(
        "export HTTPS_PROXY={gw} HTTP_PROXY={gw}\n\
         export https_proxy={gw} http_proxy={gw}\n\
         export NO_PROXY={no_proxy}\n\
         export no_proxy={no_proxy}\n\
         export NODE_EXTRA_CA_CERTS={ca}\n",
        ca = shell_quote(&ctx.ca_cert.display().to_string()),
    )
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn gptel_elisp(ctx: &SetupContext) -> String {
    let host = Value::String(ctx.host_port().to_string());
    let protocol = Value::String(ctx.scheme().to_string());
    let model = &ctx.model;
    format!(
        "(setq gptel-model '{model}\n      \
         gptel-backend\n      \
         (gptel-make-openai \"kt\"\n        \
         :host {host}\n        \
         :protocol {protocol}\n        \
         :endpoint \"/v1/chat/completions\"\n        \
         :stream t\n        \
         :key (lambda () (or (getenv \"KEEPTRUSTS_ACCESS_KEY\") \"none\"))\n        \
         :models '({model})))\n"
    )
}

/// Continue's older `config.json` beside a `config.yaml` that does not
/// exist yet: Continue reads a `config.yaml` in its place once there is
/// one, so creating it would hide the user's models.
fn continue_json_instead(yaml: &Path) -> Option<PathBuf> {
    if yaml.file_name()? != "config.yaml" || yaml.exists() {
        return None;
    }
    let json = yaml.with_file_name("config.json");
    json.is_file().then_some(json)
}

/// The XDG config folder: `$XDG_CONFIG_HOME` when set and absolute (the
/// XDG spec ignores a relative one), else `~/.config`. Electron's appData
/// (VS Code) and Zed on Linux use it; before, `~/.config` was assumed and
/// a user with XDG_CONFIG_HOME elsewhere got settings nothing reads.
fn xdg_config_home(home: Option<&Path>, xdg_config_home: Option<&Path>) -> Option<PathBuf> {
    match xdg_config_home.filter(|p| p.is_absolute()) {
        Some(dir) => Some(dir.to_path_buf()),
        None => home.map(|h| h.join(".config")),
    }
}

/// VS Code's user `settings.json` for this OS.
pub fn vscode_settings(home: Option<&Path>, xdg_config: Option<&Path>) -> Option<PathBuf> {
    if cfg!(windows) {
        return std::env::var_os("APPDATA")
            .map(|a| PathBuf::from(a).join("Code/User/settings.json"));
    }
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join("Library/Application Support/Code/User/settings.json"));
    }
    xdg_config_home(home, xdg_config).map(|c| c.join("Code/User/settings.json"))
}

/// Zed's `settings.json` for this OS.
pub fn zed_settings(home: Option<&Path>, xdg_config: Option<&Path>) -> Option<PathBuf> {
    if cfg!(windows) {
        return std::env::var_os("APPDATA").map(|a| PathBuf::from(a).join("Zed/settings.json"));
    }
    // Zed on macOS always uses ~/.config/zed.
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join(".config/zed/settings.json"));
    }
    xdg_config_home(home, xdg_config).map(|c| c.join("zed/settings.json"))
}

impl Plan {
    /// The settings as the user would type them, then the notes.
    pub fn render(&self, file: Option<&Path>) -> String {
        let mut s = String::new();
        let file = file.or(self.default_file.as_deref());
        if let Some(f) = file {
            let _ = writeln!(s, "# {}", f.display());
        }
        match &self.settings {
            Settings::Json(edits) => {
                let mut object = Value::Object(Default::default());
                for e in edits {
                    insert_at(&mut object, &e.path, e.value.clone());
                }
                let text = serde_json::to_string_pretty(&object).unwrap_or_default();
                let _ = writeln!(s, "{text}");
            }
            Settings::Continue(m) => {
                let _ = write!(s, "models:\n{}", m.item(2));
                if let Some(json) = file.and_then(continue_json_instead) {
                    let _ = writeln!(
                        s,
                        "note: {} exists and config.yaml does not; Continue would read a new config.yaml instead of it, so add this to its \"models\" list:\n{}",
                        json.display(),
                        m.json_entry()
                    );
                }
            }
            Settings::Block { body, .. } => s.push_str(body),
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// Merges the settings into `file` (else the default file), backing
    /// the old file up first; nothing is written when nothing changes.
    pub fn write(&self, file: Option<&Path>) -> Result<Written, SetupError> {
        let file = match file.map(Path::to_path_buf) {
            Some(f) => f,
            None => match &self.default_file {
                // A client's own folder missing means the client is not
                // set up here (another edition, another user): creating it
                // would leave settings nothing reads.
                Some(f) => match f.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                        return Err(SetupError::NoSettingsFolder {
                            client: self.client,
                            dir: dir.to_path_buf(),
                        })
                    }
                    _ => f.clone(),
                },
                None => {
                    return Err(SetupError::NoDefaultFile {
                        client: self.client,
                        example: match self.client {
                            Client::Gptel => "~/.emacs.d/init.el",
                            _ => "~/.bashrc or ~/.zshrc",
                        },
                    })
                }
            },
        };
        if let (Settings::Continue(model), Some(json)) =
            (&self.settings, continue_json_instead(&file))
        {
            return Err(SetupError::ContinueJson {
                json,
                yaml: file,
                entry: model.json_entry(),
            });
        }
        let old = files::read_optional(&file)?;
        let text = old.as_deref().unwrap_or("");
        let (new, changes) = match &self.settings {
            Settings::Json(edits) => {
                let (new, changes) =
                    jsonc::apply(text, edits).map_err(|source| SetupError::Json {
                        path: file.clone(),
                        source,
                    })?;
                (new, changes.iter().map(describe).collect())
            }
            Settings::Continue(model) => match continue_yaml::add_model(text, model) {
                Ok(Some(new)) => (
                    new,
                    vec![format!("+ model {} -> {}", model.name, model.api_base)],
                ),
                Ok(None) => (text.to_string(), Vec::new()),
                Err(source) => {
                    return Err(SetupError::ContinueYaml {
                        path: file.clone(),
                        source,
                    })
                }
            },
            Settings::Block { comment, body } => match files::set_block(text, comment, body) {
                Ok(Some(new)) => {
                    let lines = body.lines().map(|l| format!("+ {l}")).collect();
                    (new, lines)
                }
                Ok(None) => (text.to_string(), Vec::new()),
                Err(source) => {
                    return Err(SetupError::Block {
                        path: file.clone(),
                        source,
                    })
                }
            },
        };
        if changes.is_empty() && old.is_some() {
            return Ok(Written {
                file,
                backup: None,
                changes,
            });
        }
        let backup = files::replace_with_backup(&file, &new)?;
        Ok(Written {
            file,
            backup,
            changes,
        })
    }
}

fn describe(c: &JsonChange) -> String {
    match &c.old {
        None => format!("+ {}: {}", c.key, c.new),
        Some(old) => format!("~ {}: {old} -> {}", c.key, c.new),
    }
}

fn insert_at(object: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut here = object;
    for p in parents {
        let Value::Object(map) = here else { return };
        here = map
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if let Value::Object(map) = here {
        map.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SetupContext {
        SetupContext {
            gateway: "http://127.0.0.1:41002".into(),
            ca_cert: PathBuf::from("/h/.keeptrusts/certs/kt-ca.pem"),
            model: "gpt-4o".into(),
            home: Some(PathBuf::from("/h")),
            xdg_config_home: None,
        }
    }

    /// On Linux, VS Code and Zed keep their settings under
    /// $XDG_CONFIG_HOME when it is set and absolute, else ~/.config.
    #[cfg(all(unix, not(target_os = "macos")))]
    #[test]
    fn vscode_and_zed_settings_follow_xdg_config_home() {
        let default_file = |xdg: Option<&str>, client| {
            let mut c = ctx();
            c.xdg_config_home = xdg.map(PathBuf::from);
            plan(client, &c).default_file.unwrap()
        };
        for (xdg, dir) in [
            (None, "/h/.config"),
            (Some("/x/cfg"), "/x/cfg"),
            // Relative: not a valid XDG_CONFIG_HOME, ignored.
            (Some("cfg"), "/h/.config"),
        ] {
            for client in [Client::Vscode, Client::Cody, Client::Copilot] {
                assert_eq!(
                    default_file(xdg, client),
                    PathBuf::from(format!("{dir}/Code/User/settings.json")),
                    "{xdg:?}"
                );
            }
            assert_eq!(
                default_file(xdg, Client::Zed),
                PathBuf::from(format!("{dir}/zed/settings.json")),
                "{xdg:?}"
            );
        }
    }

    #[test]
    fn every_client_prints_its_key_setting() {
        let c = ctx();
        let want = [
            (Client::Vscode, "\"http.proxy\": \"http://127.0.0.1:41002\""),
            (
                Client::Cody,
                "\"cody.net.proxy.endpoint\": \"http://127.0.0.1:41002\"",
            ),
            (Client::Copilot, "\"http.proxyStrictSSL\": true"),
            (Client::Continue, "apiBase: http://127.0.0.1:41002/v1"),
            (Client::Zed, "\"api_url\": \"http://127.0.0.1:41002/v1\""),
            (Client::Gptel, ":host \"127.0.0.1:41002\""),
            (Client::Shell, "export HTTPS_PROXY=http://127.0.0.1:41002"),
        ];
        for (client, line) in want {
            let text = plan(client, &c).render(None);
            assert!(text.contains(line), "{client:?}: {line} not in\n{text}");
        }
        let shell = plan(Client::Shell, &c).render(None);
        assert!(shell.contains("export NO_PROXY=localhost,127.0.0.1,::1,registry.npmjs.org,pypi.org,files.pythonhosted.org,crates.io,static.crates.io,index.crates.io\n"));
        assert!(shell.contains("export NODE_EXTRA_CA_CERTS=/h/.keeptrusts/certs/kt-ca.pem\n"));
        let vscode = plan(Client::Vscode, &c).render(None);
        assert!(
            vscode.starts_with("# /h/.config/Code/User/settings.json\n")
                || !cfg!(target_os = "linux")
        );
        assert!(vscode.contains("kt ca install") && vscode.contains("NODE_EXTRA_CA_CERTS"));
        let gptel = plan(Client::Gptel, &c).render(None);
        assert!(
            gptel.contains("(gptel-make-openai \"kt\"")
                && gptel.contains(":endpoint \"/v1/chat/completions\"")
        );
    }

    #[test]
    fn a_gateway_behind_tls_keeps_its_scheme_and_every_proxy_client_hears_of_keys() {
        let mut c = ctx();
        let http = plan(Client::Gptel, &c).render(None);
        assert!(http.contains(":protocol \"http\"\n"), "{http}");
        c.gateway = "https://gateway.example.com".into();
        let https = plan(Client::Gptel, &c).render(None);
        assert!(
            https.contains(":host \"gateway.example.com\"")
                && https.contains(":protocol \"https\"\n"),
            "{https}"
        );
        let cont = plan(Client::Continue, &c).render(None);
        assert!(!cont.contains("plain HTTP"), "{cont}");
        for client in [Client::Vscode, Client::Cody, Client::Copilot] {
            let text = plan(client, &ctx()).render(None);
            assert!(
                text.contains("requires access keys, put one in the proxy URL"),
                "{client:?}:\n{text}"
            );
        }
    }

    #[test]
    fn continue_settings_never_hide_an_existing_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("config.json");
        let yaml = dir.path().join("config.yaml");
        let mine = "{\"models\": [{\"title\": \"mine\", \"provider\": \"ollama\", \"model\": \"llama3\"}]}\n";
        std::fs::write(&json, mine).unwrap();
        let p = plan(Client::Continue, &ctx());
        let shown = p.render(Some(&yaml));
        assert!(
            shown.contains("config.json exists")
                && shown.contains("\"apiBase\": \"http://127.0.0.1:41002/v1\""),
            "{shown}"
        );
        let err = p.write(Some(&yaml)).unwrap_err();
        assert!(matches!(err, SetupError::ContinueJson { .. }), "{err}");
        // One line of error; the entry to add by hand comes with it.
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
        assert!(
            err.manual_entry()
                .is_some_and(|e| e.contains("\"title\": \"kt gateway (gpt-4o)\"")),
            "{err:?}"
        );
        assert!(!yaml.exists());
        assert_eq!(std::fs::read_to_string(&json).unwrap(), mine);
        // Once there is a config.yaml, Continue reads it: the model goes there.
        std::fs::write(&yaml, "name: a\nversion: 1.0.0\nschema: v1\nmodels: []\n").unwrap();
        let written = p.write(Some(&yaml)).unwrap();
        assert!(!written.changes.is_empty());
        assert!(std::fs::read_to_string(&yaml)
            .unwrap()
            .contains("apiBase: http://127.0.0.1:41002/v1"));
        assert!(!p.render(Some(&yaml)).contains("config.json exists"));
    }

    #[test]
    fn host_port_ignores_credentials_and_paths() {
        let mut c = ctx();
        c.gateway = "http://dev:kt_x@10.0.0.5:41002/".into();
        assert_eq!(c.host_port(), "10.0.0.5:41002");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
    }

    #[test]
    fn writing_without_a_file_for_profile_clients_says_what_to_pass() {
        let err = plan(Client::Shell, &ctx()).write(None).unwrap_err();
        assert!(err.to_string().contains("--file"), "{err}");
    }

    #[test]
    fn writing_a_shell_profile_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".bashrc");
        std::fs::write(&f, "alias k=kubectl\n").unwrap();
        let p = plan(Client::Shell, &ctx());
        let first = p.write(Some(&f)).unwrap();
        assert!(first.backup.is_some() && !first.changes.is_empty());
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("alias k=kubectl\n") && text.contains("export NO_PROXY="));
        let second = p.write(Some(&f)).unwrap();
        assert!(second.changes.is_empty() && second.backup.is_none());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), text);
    }
}
