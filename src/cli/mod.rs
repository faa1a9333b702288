//! The `kt` command line: flags parsed by clap, resolved into settings, and
//! dispatched. The only module that uses `anyhow`; every error ends as one
//! line on stderr and a non-zero exit.

mod admin;
mod banner;
mod ca;
mod cache;
mod doctor;
mod events;
mod gateway;
mod keys;
mod policy;
pub mod progress;
mod report;
mod setup;
mod store;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// kt — the Keeptrusts gateway for AI coding assistants.
#[derive(Debug, Parser)]
#[command(name = "kt", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub home: HomeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where state lives; accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct HomeArgs {
    /// Home folder for all state (default: $KEEPTRUSTS_HOME or ~/.keeptrusts).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of the local CA (default: <home>/certs).
    #[arg(long, global = true, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

/// The user's own home folder (`$HOME`, or `%USERPROFILE%` on Windows).
pub fn user_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// What decides the default home folder, read from the process once so
/// tests can pass their own.
#[derive(Debug, Clone, Default)]
struct HomeEnv {
    keeptrusts_home: Option<PathBuf>,
    /// `$HOME` (`%USERPROFILE%`).
    home: Option<PathBuf>,
    /// `$SUDO_USER`, kept only when the process runs as root and it names
    /// another user.
    sudo_user: Option<String>,
}

impl HomeEnv {
    /// The process's environment; `SUDO_USER` only when `with_sudo` (it
    /// costs an `id -u`).
    fn from_process(with_sudo: bool) -> Self {
        let keeptrusts_home = std::env::var_os("KEEPTRUSTS_HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let sudo_user = std::env::var("SUDO_USER")
            .ok()
            .filter(|u| with_sudo && !u.is_empty() && u != "root")
            .filter(|_| running_as_root());
        HomeEnv {
            keeptrusts_home,
            home: user_home(),
            sudo_user,
        }
    }
}

#[cfg(unix)]
fn running_as_root() -> bool {
    let id = std::process::Command::new("id")
        .arg("-u")
        .stderr(std::process::Stdio::null())
        .output();
    id.is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"0")
}

#[cfg(not(unix))]
fn running_as_root() -> bool {
    false
}

/// Where `kt ca` works, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaTarget {
    /// The CA folder.
    pub dir: PathBuf,
    /// The user who ran `sudo kt ca ...`, when kt runs as root through it.
    pub sudo_user: Option<String>,
    /// That user's home folder (else `$HOME`): where their NSS databases are.
    pub user_home: Option<PathBuf>,
    /// `dir` is the default one in `sudo_user`'s home (no flag or
    /// `KEEPTRUSTS_HOME` chose it): root must not create the CA there, or
    /// the user's gateway would find root's files.
    pub in_sudo_users_home: bool,
}

impl HomeArgs {
    /// The home folder: `--data-dir`, else `$KEEPTRUSTS_HOME`, else `~/.keeptrusts`.
    /// Absolute: its paths go into client settings (the CA for
    /// `NODE_EXTRA_CA_CERTS`) and install commands, read from elsewhere.
    pub fn home(&self) -> anyhow::Result<PathBuf> {
        self.home_in(&HomeEnv::from_process(false))
    }

    fn home_in(&self, env: &HomeEnv) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return absolute(d);
        }
        if let Some(h) = &env.keeptrusts_home {
            return absolute(h);
        }
        let home = env.home.as_ref().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home folder: set KEEPTRUSTS_HOME or pass --data-dir")
        })?;
        Ok(home.join(".keeptrusts"))
    }

    /// The CA folder: `--ca-dir`, else `<home>/certs`.
    pub fn ca_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.ca_dir {
            Some(d) => absolute(d),
            None => Ok(self.home()?.join("certs")),
        }
    }

    /// The CA folder and user for `kt ca`. Run as `sudo kt ca install`
    /// (the Quick start), sudo usually resets `$HOME` to root's and drops
    /// `KEEPTRUSTS_HOME`: the default home is then the one of the user
    /// who ran sudo, from the user database, so root trusts the CA that
    /// user's gateway signs with.
    pub(crate) fn ca_target(&self) -> anyhow::Result<CaTarget> {
        self.ca_target_in(&HomeEnv::from_process(true), passwd_home)
    }

    fn ca_target_in(
        &self,
        env: &HomeEnv,
        passwd_home: impl Fn(&str) -> Option<PathBuf>,
    ) -> anyhow::Result<CaTarget> {
        let chosen = self.data_dir.is_some() || env.keeptrusts_home.is_some();
        let explicit = self.ca_dir.is_some() || chosen;
        let user_home = match &env.sudo_user {
            None => env.home.clone(),
            Some(user) => match passwd_home(user) {
                Some(home) => Some(home),
                None if explicit => None,
                None => anyhow::bail!(
                    "kt runs as root through sudo for {user}, but {user}'s home folder is not in the user database; pass --data-dir (or --ca-dir) to say where the CA is"
                ),
            },
        };
        let dir = match &self.ca_dir {
            Some(d) => absolute(d)?,
            None if chosen => self.home_in(env)?.join("certs"),
            None => {
                let env = HomeEnv {
                    home: user_home.clone(),
                    ..env.clone()
                };
                self.home_in(&env)?.join("certs")
            }
        };
        Ok(CaTarget {
            dir,
            in_sudo_users_home: env.sudo_user.is_some() && !explicit,
            sudo_user: env.sudo_user.clone(),
            user_home,
        })
    }
}

/// `user`'s home folder from the user database: `getent` (which also asks
/// LDAP or sssd), else macOS's directory service, else `/etc/passwd`.
fn passwd_home(user: &str) -> Option<PathBuf> {
    let valid = |c: char| !c.is_whitespace() && !matches!(c, ':' | '/' | '\\');
    if user.starts_with('-') || !user.chars().all(valid) {
        return None;
    }
    let output = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if let Some(line) = output("getent", &["passwd", user]) {
        return home_in_passwd(&line, user);
    }
    let record = format!("/Users/{user}");
    if let Some(out) = output("dscl", &[".", "-read", &record, "NFSHomeDirectory"]) {
        return home_in_dscl(&out);
    }
    home_in_passwd(&std::fs::read_to_string("/etc/passwd").ok()?, user)
}

/// The home field of `user`'s line in passwd(5) text.
fn home_in_passwd(text: &str, user: &str) -> Option<PathBuf> {
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() == 7 && fields[0] == user)
        .map(|fields| PathBuf::from(fields[5]))
        .filter(|home| home.is_absolute())
}

/// The path in `dscl . -read /Users/NAME NFSHomeDirectory` output.
fn home_in_dscl(text: &str) -> Option<PathBuf> {
    let value = text.trim().strip_prefix("NFSHomeDirectory:")?.trim();
    Some(PathBuf::from(value)).filter(|home| home.is_absolute())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", path.display()))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Manage the local certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Check policy configs.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Read, follow and verify the audit log.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Report on and purge the response cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Create, list and revoke access keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Reports from the audit log (tokens and cost).
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Print (or merge into the right file) the settings that point a
    /// client at the gateway.
    Setup(setup::SetupArgs),
    /// Run the diagnostic checklist: each line ok/warn/FAIL and its fix.
    Doctor(doctor::DoctorArgs),
}

/// The arguments clap parses: the process's, with a repeated program name
/// dropped, so a container whose entrypoint is `kt` also runs a command
/// written `kt gateway run ...` (as Compose files often say).
pub fn arguments<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.into_iter().collect();
    if args.len() > 1 && args[1] == "kt" {
        args.remove(1);
    }
    args
}

/// clap's several-line usage error as one line: the error, its possible
/// values and tips, and where help is (`kt policy check --help`).
fn usage_error_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut help = None;
    // clap puts what an error lists (the missing required arguments) on
    // indented lines right after it, up to a blank line.
    let mut in_error = false;
    for raw in rendered.lines() {
        let line = raw.trim();
        if line.is_empty() {
            in_error = false;
            continue;
        }
        if let Some(e) = line.strip_prefix("error: ") {
            parts.push(e.to_string());
            in_error = true;
        } else if let Some(tip) = line.strip_prefix("tip: ") {
            parts.push(tip.to_string());
        } else if line.starts_with("[possible values") {
            parts.push(line.trim_matches(['[', ']']).to_string());
        } else if let Some(usage) = line.strip_prefix("Usage: ") {
            let command: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect();
            help = Some(command.join(" "));
        } else if in_error && raw.starts_with(char::is_whitespace) {
            if let Some(last) = parts.last_mut() {
                let sep = if last.ends_with(':') { " " } else { ", " };
                last.push_str(sep);
                last.push_str(line);
            }
        }
    }
    let mut line = parts.join("; ");
    if let Some(command) = help.filter(|c| !c.is_empty()) {
        line.push_str(&format!(" (see `{command} --help`)"));
    }
    line
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(arguments(std::env::args_os())) {
        Ok(cli) => cli,
        // Help and version, also asked for by a bare `kt ca`: clap's own.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("kt: error: {}", usage_error_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    init_logging();
    let result = match cli.command {
        Command::Gateway(cmd) => gateway::run(&cli.home, cmd),
        Command::Ca(cmd) => ca::run(&cli.home, cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Events(cmd) => events::run(&cli.home, cmd),
        Command::Cache(cmd) => cache::run(&cli.home, cmd),
        Command::Keys(cmd) => keys::run(&cli.home, cmd),
        Command::Report(cmd) => report::run(&cli.home, cmd),
        Command::Setup(args) => setup::run(&cli.home, args),
        Command::Doctor(args) => doctor::run(&cli.home, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kt: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: root`, each cause
/// once. kt's module errors name their cause in their own message (it is
/// what a log line or an HTTP body shows) and also return it as their
/// `source()`; anyhow's `{:#}` would print it a second time.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // rustls warns once per bad handshake (an illegal SNI, say): anyone
        // who can connect could fill the log. kt counts and logs those
        // failures itself, once a minute per cause. PostgreSQL's notices
        // (`relation ... already exists, skipping` at every schema check)
        // are the server's chatter, not kt's news.
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error,tokio_postgres=warn"));
    let ansi = log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// Whether log lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything (no-color.org). Docker, journald and
/// redirected files would otherwise keep the escape codes as text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether output to stdout (`kt events tail`) gets ANSI colours: the same
/// rule as the logs, for stdout.
pub(crate) fn stdout_colours() -> bool {
    log_colours(
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("audit log {path}: {source}")]
    struct Embeds {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn error_line_prints_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotADirectory, "Not a directory");
        let e = anyhow::Error::new(Embeds {
            path: "/etc/passwd/events",
            source: io(),
        })
        .context("cannot read the audit log");
        assert_eq!(
            error_line(&e),
            "cannot read the audit log: audit log /etc/passwd/events: Not a directory"
        );
        // A cause the message does not name is still printed.
        let e = anyhow::Error::new(io()).context("cannot open /x");
        assert_eq!(error_line(&e), "cannot open /x: Not a directory");
    }

    fn home_args(data_dir: Option<&str>, ca_dir: Option<&str>) -> HomeArgs {
        HomeArgs {
            data_dir: data_dir.map(PathBuf::from),
            ca_dir: ca_dir.map(PathBuf::from),
        }
    }

    /// The environment `sudo kt ca install` sees: root's `$HOME`, no
    /// `KEEPTRUSTS_HOME`, and the user who ran sudo.
    fn under_sudo(user: &str) -> HomeEnv {
        HomeEnv {
            keeptrusts_home: None,
            home: Some("/root".into()),
            sudo_user: Some(user.into()),
        }
    }

    fn alice_only(user: &str) -> Option<PathBuf> {
        (user == "alice").then(|| PathBuf::from("/home/alice"))
    }

    #[test]
    fn kt_ca_under_sudo_uses_the_sudo_users_home() {
        let t = home_args(None, None)
            .ca_target_in(&under_sudo("alice"), alice_only)
            .unwrap();
        assert_eq!(t.dir, Path::new("/home/alice/.keeptrusts/certs"));
        assert_eq!(t.user_home.as_deref(), Some(Path::new("/home/alice")));
        assert_eq!(t.sudo_user.as_deref(), Some("alice"));
        assert!(t.in_sudo_users_home, "root must not create a CA there");
        // Without sudo: $HOME, as every other command.
        let plain = HomeEnv {
            home: Some("/home/bob".into()),
            ..HomeEnv::default()
        };
        let t = home_args(None, None)
            .ca_target_in(&plain, alice_only)
            .unwrap();
        assert_eq!(t.dir, Path::new("/home/bob/.keeptrusts/certs"));
        assert!(t.sudo_user.is_none() && !t.in_sudo_users_home);
        assert_eq!(
            t.dir,
            home_args(None, None).home_in(&plain).unwrap().join("certs")
        );
    }

    #[test]
    fn kt_ca_under_sudo_keeps_a_folder_given_by_flag_or_environment() {
        let t = home_args(Some("/d"), None)
            .ca_target_in(&under_sudo("alice"), alice_only)
            .unwrap();
        assert_eq!(t.dir, Path::new("/d/certs"));
        assert!(!t.in_sudo_users_home);
        // The NSS databases are still alice's.
        assert_eq!(t.user_home.as_deref(), Some(Path::new("/home/alice")));
        let t = home_args(None, Some("/c"))
            .ca_target_in(&under_sudo("alice"), alice_only)
            .unwrap();
        assert_eq!(
            (t.dir.as_path(), t.in_sudo_users_home),
            (Path::new("/c"), false)
        );
        let env = HomeEnv {
            keeptrusts_home: Some("/k".into()),
            ..under_sudo("alice")
        };
        let t = home_args(None, None)
            .ca_target_in(&env, alice_only)
            .unwrap();
        assert_eq!(
            (t.dir.as_path(), t.in_sudo_users_home),
            (Path::new("/k/certs"), false)
        );
    }

    #[test]
    fn kt_ca_under_sudo_for_an_unknown_user_does_not_fall_back_to_roots_home() {
        let err = home_args(None, None)
            .ca_target_in(&under_sudo("carol"), alice_only)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("carol's home folder") && err.contains("--data-dir"),
            "{err}"
        );
        let t = home_args(Some("/d"), None)
            .ca_target_in(&under_sudo("carol"), alice_only)
            .unwrap();
        assert_eq!(
            (t.dir.as_path(), t.user_home),
            (Path::new("/d/certs"), None)
        );
    }

    #[test]
    fn home_folders_from_the_user_database() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      alice2:x:1001:1001::/home/alice2:/bin/sh\n\
                      alice:x:1000:1000:Alice A,,,:/home/alice:/bin/bash\n\
                      broken:x:1002\n";
        let home = |u| home_in_passwd(passwd, u);
        assert_eq!(home("alice"), Some(PathBuf::from("/home/alice")));
        assert_eq!(home("alice2"), Some(PathBuf::from("/home/alice2")));
        assert_eq!(home("ali"), None);
        assert_eq!(home("broken"), None);
        let dscl = "NFSHomeDirectory: /Users/alice\n";
        assert_eq!(home_in_dscl(dscl), Some(PathBuf::from("/Users/alice")));
        assert_eq!(home_in_dscl("No such key: NFSHomeDirectory\n"), None);
        // Not a user name: never passed to a program.
        assert_eq!(passwd_home("-s"), None);
        assert_eq!(passwd_home("a:b"), None);
    }

    #[test]
    fn log_colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
    }
}
