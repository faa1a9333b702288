//! Trusting the local CA in OS trust stores (`kt ca install` / `kt ca uninstall`).
//!
//! [`install_plan`] and [`uninstall_plan`] take one snapshot of the machine
//! (`System::detect`) and turn it into a list of shell commands with pure
//! functions (`plan_install`, `plan_uninstall`) that tests drive with fake
//! systems. [`run`] executes a plan; [`TrustPlan::render`] prints it for
//! `--dry-run` so it can be pasted into a shell.

use crate::tls::ca::{CaPaths, CA_COMMON_NAME};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEBIAN_DIR: &str = "/usr/local/share/ca-certificates";
/// Debian's update-ca-certificates only picks up files ending in `.crt`.
const DEBIAN_FILE: &str = "/usr/local/share/ca-certificates/keeptrusts-kt-ca.crt";
const FEDORA_DIR: &str = "/etc/pki/ca-trust/source/anchors";
const FEDORA_FILE: &str = "/etc/pki/ca-trust/source/anchors/keeptrusts-kt-ca.pem";
/// openSUSE's update-ca-certificates reads its anchors here, not Debian's folder.
const SUSE_DIR: &str = "/etc/pki/trust/anchors";
const SUSE_FILE: &str = "/etc/pki/trust/anchors/keeptrusts-kt-ca.pem";
const MAC_KEYCHAIN: &str = "/Library/Keychains/System.keychain";
const NSS_PACKAGES: &str = "libnss3-tools (Debian/Ubuntu), nss-tools (Fedora) or nss (Arch)";
/// Programs detection looks for.
const PROGRAMS: &str = "update-ca-certificates update-ca-trust trust certutil security sudo";

/// One command the plan runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Human description of what the command does.
    pub what: String,
    pub program: String,
    pub args: Vec<String>,
}

/// Commands to run, in order, plus lines to print afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustPlan {
    pub steps: Vec<Step>,
    /// Printed after the commands: the NODE_EXTRA_CA_CERTS line, warnings.
    pub notes: Vec<String>,
    quoting: Quoting,
    /// `(command, fix)` when a step needs root/admin that we cannot get.
    blocked: Option<(String, String)>,
}

/// Errors planning or running trust-store changes.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("`{command}` failed ({status}){}", failure_detail(.stderr))]
    StepFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: `{program}` was not found on PATH; install it or run the command by hand")]
    ProgramNotFound { program: String, command: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` needs administrator rights: {fix}")]
    NeedsRoot { command: String, fix: String },
    #[error("CA certificate {} not found; run `kt ca init` first", .path.display())]
    MissingCert { path: PathBuf },
    #[error("{reason}; trust {} by hand: add it to the system's trusted root certificates, and point NODE_EXTRA_CA_CERTS at it for Node.js/VS Code", .pem.display())]
    Unsupported { reason: String, pem: PathBuf },
}

fn failure_detail(stderr: &str) -> String {
    if stderr.is_empty() {
        return String::new();
    }
    let lower = stderr.to_lowercase();
    let denied = ["denied", "not permitted", "must be root", "authoriz"];
    match denied.iter().any(|w| lower.contains(w)) {
        true => format!(": {stderr}; run as root or with sudo (Windows: as Administrator)"),
        false => format!(": {stderr}"),
    }
}

/// The user whose NSS databases (Chromium, Electron apps, Firefox) a
/// plan updates.
#[derive(Debug, Clone, Default)]
pub struct NssUser {
    /// Their home folder, where the databases are.
    pub home: Option<PathBuf>,
    /// Set when kt runs as root through sudo: the user who ran it. The
    /// NSS steps then run as that user (`sudo -u`), on their databases,
    /// which stay theirs: the same databases `--dry-run` run by that user
    /// shows.
    pub sudo_user: Option<String>,
}

/// Plan for `kt ca install` on this machine.
pub fn install_plan(paths: &CaPaths, user: &NssUser) -> Result<TrustPlan, TrustError> {
    plan_install(&System::detect(paths, user), paths)
}

/// Plan for `kt ca install` on this machine before the CA exists: the
/// steps it runs once it has created the CA at `paths` (for `--dry-run`,
/// which creates nothing).
pub fn install_plan_for_new_ca(paths: &CaPaths, user: &NssUser) -> Result<TrustPlan, TrustError> {
    let mut sys = System::detect(paths, user);
    sys.existing.extend([paths.cert.clone(), paths.der.clone()]);
    plan_install(&sys, paths)
}

/// Plan for `kt ca uninstall` on this machine.
pub fn uninstall_plan(paths: &CaPaths, user: &NssUser) -> Result<TrustPlan, TrustError> {
    let mut sys = System::detect(paths, user);
    let debian = linux_store(&sys) == Some(LinuxStore::Debian);
    if let Some(jdk) = sys.jdk.as_mut().filter(|j| j.follows_system && debian) {
        // A JVM start, so asked only here, and only where the entry can be.
        let list = [
            "-list",
            "-cacerts",
            "-storepass",
            "changeit",
            "-alias",
            DEBIAN_JDK_ALIAS,
        ];
        jdk.holds_debian_entry = quiet(&jdk.keytool, &list).is_some();
    }
    let arch = linux_store(&sys) == Some(LinuxStore::Arch);
    if let (true, false, Some(trust)) = (arch, sys.exists(&paths.cert), sys.program("trust")) {
        let anchors = quiet(trust, &["list", "--filter=ca-anchors"]).unwrap_or_default();
        sys.p11_anchors = anchor_uris(&anchors, CA_COMMON_NAME);
    }
    plan_uninstall(&sys, paths)
}

/// The URIs of the entries labelled `label` in `trust list` output: each
/// entry is its `pkcs11:` URI, then indented `key: value` lines.
fn anchor_uris(list: &str, label: &str) -> Vec<String> {
    let mut uris = Vec::new();
    let mut uri = None;
    for line in list.lines() {
        if line.starts_with("pkcs11:") {
            uri = Some(line.trim());
        } else if line.trim().strip_prefix("label: ") == Some(label) {
            uris.extend(uri.take().map(String::from));
        }
    }
    uris
}

/// Runs the steps in order, stopping at the first failure.
pub fn run(plan: &TrustPlan) -> Result<(), TrustError> {
    if let Some((command, fix)) = plan.blocked.clone() {
        return Err(TrustError::NeedsRoot { command, fix });
    }
    for step in &plan.steps {
        run_step(step, plan.quoting)?;
    }
    Ok(())
}

fn run_step(step: &Step, quoting: Quoting) -> Result<(), TrustError> {
    let command = step.line(quoting);
    eprintln!("kt: {}\n  $ {command}", step.what);
    let out = Command::new(&step.program)
        .args(&step.args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output();
    let (program, command) = (step.program.clone(), command);
    match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let status = out.status.to_string();
            Err(TrustError::StepFailed {
                command,
                status,
                stderr,
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(TrustError::ProgramNotFound { program, command })
        }
        Err(source) => Err(TrustError::Spawn { command, source }),
    }
}

impl TrustPlan {
    /// The commands, one per line, quoted so they can be pasted into a
    /// shell; then the notes.
    pub fn render(&self) -> String {
        let mut lines: Vec<String> = self.steps.iter().map(|s| s.line(self.quoting)).collect();
        if !lines.is_empty() && !self.notes.is_empty() {
            lines.push(String::new());
        }
        lines.extend(self.notes.iter().cloned());
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Step {
    fn line(&self, quoting: Quoting) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| quote(w, quoting))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How commands are quoted when rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Quoting {
    /// POSIX sh: single quotes.
    #[default]
    Posix,
    /// cmd.exe / PowerShell: double quotes.
    Windows,
}

fn quote(word: &str, quoting: Quoting) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c);
    match quoting {
        Quoting::Posix if !word.is_empty() && word.chars().all(safe) => word.to_string(),
        Quoting::Posix => format!("'{}'", word.replace('\'', r"'\''")),
        Quoting::Windows if !word.is_empty() && word.chars().all(|c| safe(c) || c == '\\') => {
            word.to_string()
        }
        Quoting::Windows => format!("\"{}\"", word.replace('"', "\\\"")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Os {
    #[default]
    Linux,
    Mac,
    Windows,
    Other(String),
}

impl Os {
    /// The OS kt runs on.
    fn this() -> Os {
        match std::env::consts::OS {
            "linux" => Os::Linux,
            "macos" => Os::Mac,
            "windows" => Os::Windows,
            other => Os::Other(other.to_string()),
        }
    }
}

/// Which Linux system trust store tooling is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinuxStore {
    /// Debian/Ubuntu: update-ca-certificates.
    Debian,
    /// Fedora/RHEL: update-ca-trust with /etc/pki/ca-trust.
    Fedora,
    /// openSUSE/SLES: update-ca-certificates with /etc/pki/trust/anchors.
    Suse,
    /// Arch and others with p11-kit's `trust`.
    Arch,
}

/// An NSS database (Chromium/Electron's `~/.pki/nssdb`, Firefox profiles).
#[derive(Debug, Clone)]
struct NssDb {
    dir: PathBuf,
    /// The CA's nickname is already in it.
    has_ca: bool,
}

/// A JDK on this machine: JVM apps (`java.net.http`, Gradle, Maven) trust
/// its `cacerts`, not the OS store.
#[derive(Debug, Clone)]
pub struct Jdk {
    /// How to invoke its `keytool`.
    pub keytool: String,
    /// Its `cacerts` file, through its symlinks, when there is one.
    pub cacerts: Option<PathBuf>,
    /// That file is the system store's own export (Debian's
    /// ca-certificates-java, Fedora's update-ca-trust): the system step
    /// updates it.
    pub follows_system: bool,
    /// It holds the entry Debian's ca-certificates-java made for the CA,
    /// which `update-ca-certificates --fresh` does not take out again.
    holds_debian_entry: bool,
}

/// The alias `keytool` gives the CA in a JDK's `cacerts`.
const JDK_ALIAS: &str = "keeptrusts-kt";
/// The alias Debian's ca-certificates-java gives [`DEBIAN_FILE`].
const DEBIAN_JDK_ALIAS: &str = "debian:keeptrusts-kt-ca.pem";

/// Snapshot of what the plan depends on.
#[derive(Debug, Clone, Default)]
struct System {
    os: Os,
    /// Root on Unix, elevated (administrator) on Windows.
    is_root: bool,
    /// Programs found: name -> how to invoke it (bare name when on PATH,
    /// absolute path when only found in an sbin folder).
    programs: BTreeMap<String, String>,
    /// Paths of interest that exist (store folders, the CA files).
    existing: BTreeSet<PathBuf>,
    nss_dbs: Vec<NssDb>,
    /// Whether the system store holds the CA; `None` when unknown.
    system_has_ca: Option<bool>,
    /// Set when running as root through sudo: whose NSS databases these
    /// are, and as whom their steps run.
    sudo_user: Option<String>,
    /// The JDK a user would run (see [`find_jdk`]).
    jdk: Option<Jdk>,
    /// PKCS#11 URIs of p11-kit anchors labelled as the CA; asked only to
    /// uninstall on Arch without the PEM, which would name the anchor.
    p11_anchors: Vec<String>,
    /// The CA certificate's SHA-1 thumbprint (upper-case hex), by which
    /// macOS's `security` and Windows' `certutil` name one certificate:
    /// every kt CA has the same name, and a company CA another one.
    thumbprint: Option<String>,
}

impl System {
    /// Looks at the real machine (read-only: PATH, a few files, `id -u`,
    /// and listing commands of the trust tools).
    fn detect(paths: &CaPaths, user: &NssUser) -> System {
        let os = Os::this();
        let found = |p: &str| find_program(p, &os).map(|how| (p.to_string(), how));
        let programs = PROGRAMS.split(' ').filter_map(found).collect();
        let files = [
            DEBIAN_DIR,
            DEBIAN_FILE,
            FEDORA_DIR,
            FEDORA_FILE,
            SUSE_DIR,
            SUSE_FILE,
        ]
        .map(PathBuf::from);
        let ca = [paths.cert.clone(), paths.der.clone()];
        let existing = files.into_iter().chain(ca).filter(|p| p.exists()).collect();
        let is_root = match os {
            Os::Windows => quiet("net", &["session"]).is_some(),
            _ => quiet("id", &["-u"]).is_some_and(|s| s.trim() == "0"),
        };
        let sudo_user = user.sudo_user.clone().filter(|_| is_root);
        let mut sys = System {
            os,
            is_root,
            programs,
            ..System::default()
        };
        (sys.existing, sys.sudo_user) = (existing, sudo_user);
        sys.thumbprint = thumbprint(paths);
        sys.system_has_ca = match (&sys.os, linux_store(&sys)) {
            (Os::Linux, Some(LinuxStore::Debian)) => Some(sys.exists(DEBIAN_FILE)),
            (Os::Linux, Some(LinuxStore::Fedora)) => Some(sys.exists(FEDORA_FILE)),
            (Os::Linux, Some(LinuxStore::Suse)) => Some(sys.exists(SUSE_FILE)),
            (Os::Mac, _) => Some(match &sys.thumbprint {
                // `-Z` prints each certificate's SHA-1 hash.
                Some(hash) => quiet("security", &["find-certificate", "-a", "-Z", MAC_KEYCHAIN])
                    .is_some_and(|out| out.to_ascii_uppercase().contains(hash.as_str())),
                None => quiet(
                    "security",
                    &["find-certificate", "-c", CA_COMMON_NAME, MAC_KEYCHAIN],
                )
                .is_some(),
            }),
            (Os::Windows, _) => {
                let id = sys.thumbprint.as_deref().unwrap_or(CA_COMMON_NAME);
                Some(quiet("certutil", &["-store", "root", id]).is_some())
            }
            _ => None,
        };
        sys.jdk = find_jdk(&sys.os);
        if let Some(jdk) = &sys.jdk {
            sys.programs.insert("keytool".into(), jdk.keytool.clone());
        }
        if let (Os::Linux, Some(home)) = (&sys.os, &user.home) {
            let certutil = sys.program("certutil").map(str::to_string);
            for dir in find_nss_dbs(home) {
                let db = format!("sql:{}", dir.to_string_lossy());
                let list = ["-L", "-d", &db, "-n", CA_COMMON_NAME];
                let has_ca = certutil.as_ref().is_some_and(|c| quiet(c, &list).is_some());
                sys.nss_dbs.push(NssDb { dir, has_ca });
            }
        }
        sys
    }

    fn program(&self, name: &str) -> Option<&str> {
        self.programs.get(name).map(String::as_str)
    }

    fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.existing.contains(path.as_ref())
    }
}

/// The JDK whose `keytool` a user would run on this machine (see
/// [`find_jdk`]).
pub fn local_jdk() -> Option<Jdk> {
    find_jdk(&Os::this())
}

/// The JDK `JAVA_HOME` names (as mkcert picks it), else macOS's current
/// one, else the one whose `keytool` is on PATH, followed through its
/// symlinks (`/usr/bin/keytool` -> `/usr/lib/jvm/<jdk>/bin/keytool`) to its
/// `cacerts`.
fn find_jdk(os: &Os) -> Option<Jdk> {
    let exe = if *os == Os::Windows {
        "keytool.exe"
    } else {
        "keytool"
    };
    let java_home = std::env::var_os("JAVA_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .filter(|h| h.join("bin").join(exe).is_file());
    // macOS's /usr/bin/keytool is a stub that fails when no JDK is
    // installed; `java_home` names the one it would run.
    let java_home = java_home.or_else(|| {
        let home = (*os == Os::Mac).then(|| quiet("/usr/libexec/java_home", &[]))??;
        Some(PathBuf::from(home.trim())).filter(|h| h.join("bin").join(exe).is_file())
    });
    if java_home.is_none() && *os == Os::Mac {
        return None;
    }
    let (keytool, home) = match java_home {
        Some(home) => (
            home.join("bin").join(exe).to_string_lossy().into_owned(),
            home,
        ),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let found = std::env::split_paths(&path)
                .map(|d| d.join(exe))
                .find(|k| k.is_file())?;
            let bin = std::fs::canonicalize(found).ok()?;
            ("keytool".to_string(), bin.parent()?.parent()?.to_path_buf())
        }
    };
    let cacerts = ["lib/security/cacerts", "jre/lib/security/cacerts"]
        .iter()
        .map(|c| home.join(c))
        .find_map(|c| std::fs::canonicalize(c).ok());
    let follows_system =
        *os == Os::Linux && cacerts.as_ref().is_some_and(|c| c.starts_with("/etc"));
    Some(Jdk {
        keytool,
        cacerts,
        follows_system,
        holds_debian_entry: false,
    })
}

/// How to invoke `name`: bare when on PATH, else its path in an sbin folder
/// (often missing from non-root PATHs on Debian).
fn find_program(name: &str, os: &Os) -> Option<String> {
    let exe = |dir: &Path| {
        let plain = dir.join(name);
        plain.is_file() || (*os == Os::Windows && dir.join(format!("{name}.exe")).is_file())
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| exe(&d)) {
        return Some(name.to_string());
    }
    if *os == Os::Windows {
        return None;
    }
    ["/usr/local/sbin", "/usr/sbin", "/sbin"]
        .iter()
        .map(Path::new)
        .find(|d| exe(d))
        .map(|d| d.join(name).to_string_lossy().into_owned())
}

/// `~/.pki/nssdb` and Firefox profiles (including the snap's) with cert9.db.
fn find_nss_dbs(home: &Path) -> Vec<PathBuf> {
    let mut dbs = Vec::new();
    let pki = home.join(".pki/nssdb");
    if pki.is_dir() {
        dbs.push(pki);
    }
    for root in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        let Ok(entries) = std::fs::read_dir(home.join(root)) else {
            continue;
        };
        let mut profiles: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("cert9.db").is_file())
            .collect();
        profiles.sort();
        dbs.extend(profiles);
    }
    dbs
}

/// Runs a read-only command quietly; its stdout if it succeeded.
fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::null());
    let out = cmd.output().ok()?;
    let success = out.status.success();
    success.then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn linux_store(sys: &System) -> Option<LinuxStore> {
    // openSUSE ships a command of Debian's name that reads another folder.
    if sys.program("update-ca-certificates").is_some() && sys.exists(SUSE_DIR) {
        Some(LinuxStore::Suse)
    } else if sys.program("update-ca-certificates").is_some() {
        Some(LinuxStore::Debian)
    } else if sys.program("update-ca-trust").is_some() && sys.exists(FEDORA_DIR) {
        Some(LinuxStore::Fedora)
    } else if sys.program("trust").is_some() {
        Some(LinuxStore::Arch)
    } else {
        None
    }
}

/// Accumulates a plan, adding sudo to steps that need root.
struct Builder<'a> {
    sys: &'a System,
    verb: &'static str,
    plan: TrustPlan,
}

impl<'a> Builder<'a> {
    fn new(sys: &'a System, verb: &'static str) -> Self {
        let quoting = match sys.os {
            Os::Windows => Quoting::Windows,
            _ => Quoting::Posix,
        };
        let plan = TrustPlan {
            quoting,
            ..TrustPlan::default()
        };
        Builder { sys, verb, plan }
    }

    /// A step changing the system store: needs root (sudo) or elevation.
    fn admin(&mut self, what: &str, cmd: &str, extra: &[&str]) {
        self.step(true, what, cmd, extra)
    }

    /// `cmd` is the program and fixed words (split on spaces), `extra` the
    /// arguments that may hold spaces.
    fn step(&mut self, admin: bool, what: &str, cmd: &str, extra: &[&str]) {
        let (sys, verb, q) = (self.sys, self.verb, self.plan.quoting);
        let words = cmd.split(' ').chain(extra.iter().copied());
        let mut words: Vec<String> = words.map(String::from).collect();
        if let Some(p) = words.first_mut() {
            *p = sys.program(p).unwrap_or(p).to_string();
        }
        if admin && !sys.is_root {
            match sys.program("sudo") {
                Some(sudo) if sys.os != Os::Windows => words.insert(0, sudo.to_string()),
                _ if self.plan.blocked.is_none() => {
                    let fix = match sys.os {
                        Os::Windows => format!("re-run `kt ca {verb}` from an elevated terminal (Run as administrator)"),
                        _ => format!("sudo is not available; re-run `kt ca {verb}` as root, or run the commands printed by `kt ca {verb} --dry-run` as root"),
                    };
                    let line: Vec<_> = words.iter().map(|w| quote(w, q)).collect();
                    self.plan.blocked = Some((line.join(" "), fix));
                }
                _ => {}
            }
        }
        let (program, what) = (words.remove(0), what.to_string());
        let args = words;
        self.plan.steps.push(Step {
            what,
            program,
            args,
        });
    }

    /// Prefixes the last step with `sudo -u USER` when `as_user` is set.
    fn run_last_step_as(&mut self, as_user: Option<(&str, &str)>) {
        let (Some((sudo, user)), Some(step)) = (as_user, self.plan.steps.last_mut()) else {
            return;
        };
        let program = std::mem::replace(&mut step.program, sudo.to_string());
        let prefix = ["-u".to_string(), user.to_string(), program];
        step.args.splice(0..0, prefix);
    }

    fn note(&mut self, note: impl Into<String>) {
        self.plan.notes.push(note.into());
    }

    /// NSS databases (Linux only; Windows' certutil is another program).
    fn nss(&mut self, pem: &str, install: bool) {
        let (sys, verb) = (self.sys, self.verb);
        if sys.os != Os::Linux || (sys.nss_dbs.is_empty() && !install) {
            return;
        }
        if sys.nss_dbs.is_empty() {
            return self.note("note: no NSS database found (~/.pki/nssdb or Firefox profiles); Chromium, Electron apps and Firefox will not trust the CA until one exists: start them once, then re-run `kt ca install`");
        }
        if sys.program("certutil").is_none() {
            let dirs: Vec<_> = sys.nss_dbs.iter().map(|d| d.dir.display()).collect();
            let dirs = dirs.iter().map(ToString::to_string).collect::<Vec<_>>();
            return self.note(format!("warning: NSS databases found ({}) but NSS `certutil` is not installed; install {NSS_PACKAGES}, then re-run `kt ca {verb}` so Chromium/Electron apps and Firefox are updated", dirs.join(", ")));
        }
        // Root's certutil would leave root-owned files in the user's
        // databases; `sudo -u` keeps them the user's.
        let as_user = match (&sys.sudo_user, sys.program("sudo")) {
            (None, _) => None,
            (Some(user), Some(sudo)) => Some((sudo, user.as_str())),
            (Some(user), None) => return self.note(format!("warning: sudo was not found to update {user}'s NSS databases as {user}; run `kt ca {verb}` as {user} (without sudo) so Chromium/Electron apps and Firefox are updated")),
        };
        for db in &sys.nss_dbs {
            let dir = db.dir.to_string_lossy();
            let sql = format!("sql:{dir}");
            if db.has_ca {
                let what = format!("remove the CA from the NSS database {dir}");
                let extra = [&sql, "-n", CA_COMMON_NAME];
                self.step(false, &what, "certutil -D -d", &extra);
                self.run_last_step_as(as_user);
            }
            if install {
                let what = format!("trust the CA in the NSS database {dir}");
                let extra = [&sql, "-n", CA_COMMON_NAME, "-t", "C,,", "-i", pem];
                self.step(false, &what, "certutil -A -d", &extra);
                self.run_last_step_as(as_user);
            }
        }
    }

    fn finish(mut self, pem: &str) -> TrustPlan {
        let (sys, verb) = (self.sys, self.verb);
        if self.plan.blocked.is_some() {
            self.note(match sys.os {
                Os::Windows => "warning: the commands above must run from an elevated terminal (Run as administrator)",
                _ => "warning: the system trust store commands above must run as root (sudo was not found)",
            });
        }
        let windows = sys.os == Os::Windows;
        if verb == "install" {
            let how = match windows {
                true => "set it, then restart VS Code:",
                false => "add this line to your shell profile and launch VS Code from a shell that has it:",
            };
            self.note(format!("Node.js (and so VS Code and its extensions) trusts extra CAs only through NODE_EXTRA_CA_CERTS, read once at process start; {how}"));
            self.note(match windows {
                true => format!("setx NODE_EXTRA_CA_CERTS {}", quote(pem, Quoting::Windows)),
                false => format!("export NODE_EXTRA_CA_CERTS={}", quote(pem, Quoting::Posix)),
            });
        } else if windows {
            self.note(r"if you set NODE_EXTRA_CA_CERTS, remove it: reg delete HKCU\Environment /F /V NODE_EXTRA_CA_CERTS");
        } else {
            self.note("if you added `export NODE_EXTRA_CA_CERTS=...` to your shell profile, remove that line (and run `unset NODE_EXTRA_CA_CERTS`)");
        }
        self.jdk(pem);
        self.plan
    }

    /// The JDK's own trust store, which `kt` leaves to the user: it belongs
    /// to a JDK install, often one of several, and `keytool` asks for its
    /// password. Nothing to say when the system step updates it.
    fn jdk(&mut self, pem: &str) {
        let Some(jdk) = self.sys.jdk.as_ref().filter(|j| !j.follows_system) else {
            return;
        };
        let q = self.plan.quoting;
        let keytool = quote(&jdk.keytool, q);
        if self.verb == "install" {
            self.note("JVM apps (java.net.http, Gradle, Maven) trust the JDK's cacerts, not the system store; import the CA there (as root for a system-wide JDK; the default store password is changeit):");
            self.note(format!("{keytool} -importcert -noprompt -cacerts -storepass changeit -alias {JDK_ALIAS} -file {}", quote(pem, q)));
        } else {
            self.note(format!("if you imported the CA into a JDK's cacerts, remove it: {keytool} -delete -cacerts -storepass changeit -alias {JDK_ALIAS}"));
        }
    }
}

const NO_LINUX_STORE: &str = "no supported system trust tool found (looked for update-ca-certificates, update-ca-trust with /etc/pki/ca-trust, and p11-kit's `trust`)";
const BUNDLE: &str =
    "rebuild the system CA bundle (VS Code on Linux reads /etc/ssl/certs/ca-certificates.crt)";

fn unsupported(sys: &System, paths: &CaPaths) -> TrustError {
    let reason = match &sys.os {
        Os::Other(name) => format!("automatic trust is not supported on {name}"),
        _ => NO_LINUX_STORE.to_string(),
    };
    let pem = paths.cert.clone();
    TrustError::Unsupported { reason, pem }
}

fn missing(path: &Path) -> TrustError {
    let path = path.to_path_buf();
    TrustError::MissingCert { path }
}

fn plan_install(sys: &System, paths: &CaPaths) -> Result<TrustPlan, TrustError> {
    let windows = sys.os == Os::Windows;
    let needed = if windows { &paths.der } else { &paths.cert };
    if !sys.exists(needed) {
        return Err(missing(needed));
    }
    let pem = &paths.cert.to_string_lossy().into_owned();
    let mut b = Builder::new(sys, "install");
    match &sys.os {
        Os::Linux => {
            let (dir, file, update) = match linux_store(sys) {
                None => return Err(unsupported(sys, paths)),
                Some(LinuxStore::Arch) => ("", "", ""),
                Some(LinuxStore::Debian) => (DEBIAN_DIR, DEBIAN_FILE, "update-ca-certificates"),
                Some(LinuxStore::Fedora) => (FEDORA_DIR, FEDORA_FILE, "update-ca-trust extract"),
                Some(LinuxStore::Suse) => (SUSE_DIR, SUSE_FILE, "update-ca-certificates"),
            };
            if update.is_empty() {
                let what = "add the CA as a p11-kit trust anchor";
                b.admin(what, "trust anchor --store", &[pem]);
            } else {
                if !sys.exists(dir) {
                    b.admin(&format!("create {dir}"), "mkdir -p", &[dir]);
                }
                let what = format!("copy the CA certificate to {file}");
                b.admin(&what, "install -m 0644", &[pem, file]);
                b.admin(BUNDLE, update, &[]);
            }
            b.nss(pem, true);
        }
        Os::Mac => {
            let cmd = "security add-trusted-cert -d -r trustRoot -p ssl -p basic -k";
            let what = "trust the CA in the System keychain";
            b.admin(what, cmd, &[MAC_KEYCHAIN, pem]);
        }
        Os::Windows => {
            let der = paths.der.to_string_lossy();
            let what = "add the CA to the machine's Trusted Root store";
            b.admin(what, "certutil -addstore -f root", &[&der]);
        }
        Os::Other(_) => return Err(unsupported(sys, paths)),
    }
    Ok(b.finish(pem))
}

/// The SHA-1 thumbprint of the CA certificate in `paths` (upper-case hex,
/// as `certutil` and `security -Z` print it); `None` when it is gone.
fn thumbprint(paths: &CaPaths) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = match std::fs::read(&paths.der) {
        Ok(der) => der,
        Err(_) => rustls_pki_types::CertificateDer::from_pem_file(&paths.cert)
            .ok()?
            .to_vec(),
    };
    Some(
        sha1_smol::Sha1::from(der)
            .digest()
            .to_string()
            .to_ascii_uppercase(),
    )
}

fn plan_uninstall(sys: &System, paths: &CaPaths) -> Result<TrustPlan, TrustError> {
    let pem = &paths.cert.to_string_lossy().into_owned();
    let mut b = Builder::new(sys, "uninstall");
    let absent = sys.system_has_ca == Some(false);
    if absent {
        b.note("the CA is not in the system trust store; nothing to remove there");
    }
    match (&sys.os, linux_store(sys)) {
        (Os::Other(_), _) => return Err(unsupported(sys, paths)),
        (Os::Linux, None) if !absent => b.note(format!("note: {NO_LINUX_STORE}")),
        (Os::Linux, Some(LinuxStore::Debian)) if !absent => {
            b.admin(&format!("remove {DEBIAN_FILE}"), "rm -f", &[DEBIAN_FILE]);
            let what = "rebuild the system CA bundle from scratch";
            b.admin(what, "update-ca-certificates --fresh", &[]);
        }
        (Os::Linux, Some(LinuxStore::Fedora)) if !absent => {
            b.admin(&format!("remove {FEDORA_FILE}"), "rm -f", &[FEDORA_FILE]);
            b.admin(BUNDLE, "update-ca-trust extract", &[]);
        }
        (Os::Linux, Some(LinuxStore::Suse)) if !absent => {
            b.admin(&format!("remove {SUSE_FILE}"), "rm -f", &[SUSE_FILE]);
            b.admin(BUNDLE, "update-ca-certificates", &[]);
        }
        (Os::Linux, Some(LinuxStore::Arch)) if !absent => {
            // Without the PEM the anchor is named by its URI, found by the
            // CA's label; the NSS steps below need neither.
            let what = "remove the p11-kit trust anchor";
            if sys.exists(&paths.cert) {
                b.admin(what, "trust anchor --remove", &[pem]);
            } else if sys.p11_anchors.is_empty() {
                b.note(format!("warning: {pem} is gone and `trust list --filter=ca-anchors` shows no anchor labelled \"{CA_COMMON_NAME}\"; if the CA is still trusted, remove it with `trust anchor --remove` and the pkcs11: URI `trust list` prints for it"));
            }
            for uri in &sys.p11_anchors {
                b.admin(what, "trust anchor --remove", &[uri]);
            }
        }
        (Os::Mac, _) if !absent => {
            if sys.exists(&paths.cert) {
                let what = "remove the CA's trust settings";
                b.admin(what, "security remove-trusted-cert -d", &[pem]);
            }
            let what = "delete the CA from the System keychain";
            match &sys.thumbprint {
                Some(hash) => {
                    b.admin(
                        what,
                        "security delete-certificate -Z",
                        &[hash, MAC_KEYCHAIN],
                    );
                }
                None => {
                    let cmd = "security delete-certificate -c";
                    b.admin(what, cmd, &[CA_COMMON_NAME, MAC_KEYCHAIN]);
                }
            }
        }
        (Os::Windows, _) if !absent => {
            let what = "remove the CA from the machine's Trusted Root store";
            let id = sys.thumbprint.as_deref().unwrap_or(CA_COMMON_NAME);
            b.admin(what, "certutil -delstore root", &[id]);
        }
        _ => {}
    }
    // Whether or not the system store still holds the CA: an uninstall by
    // an earlier kt left this entry behind.
    if sys.jdk.as_ref().is_some_and(|j| j.holds_debian_entry) {
        let what = "remove the CA from the JDK's cacerts (Debian's ca-certificates-java keeps it when the system store drops it)";
        let cmd = "keytool -delete -cacerts -storepass changeit -alias";
        b.admin(what, cmd, &[DEBIAN_JDK_ALIAS]);
    }
    b.nss(pem, false);
    Ok(b.finish(pem))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const PEM: &str = "/home/u/kt ca/kt-ca.pem";
    const Q_PEM: &str = "'/home/u/kt ca/kt-ca.pem'";

    fn paths() -> CaPaths {
        let mut paths = CaPaths::in_dir("/home/u/kt ca");
        paths.der = PathBuf::from(r"C:\Users\A B\kt\kt-ca.cer");
        paths
    }

    /// A fake system: root, with the CA files present.
    fn sys(os: Os, programs: &[&str], existing: &[&str]) -> System {
        let mut existing: BTreeSet<PathBuf> = existing.iter().map(PathBuf::from).collect();
        existing.extend([paths().cert, paths().der]);
        let programs = programs.iter().map(|p| (p.to_string(), p.to_string()));
        let (programs, is_root) = (programs.collect(), true);
        System {
            os,
            is_root,
            programs,
            existing,
            ..Default::default()
        }
    }

    /// A JDK found at `keytool`: its store rebuilt from the system's or
    /// not, holding Debian's entry for the CA or not.
    fn jdk(keytool: &str, follows_system: bool, holds_debian_entry: bool) -> Jdk {
        Jdk {
            keytool: keytool.into(),
            cacerts: None,
            follows_system,
            holds_debian_entry,
        }
    }

    fn debian() -> System {
        sys(Os::Linux, &["update-ca-certificates"], &[DEBIAN_DIR])
    }

    fn nss(dir: &str, has_ca: bool) -> NssDb {
        let dir = PathBuf::from(dir);
        NssDb { dir, has_ca }
    }

    fn step(program: &str, args: &[&str]) -> Step {
        let (what, program) = (String::new(), program.to_string());
        let args = args.iter().map(|a| a.to_string()).collect();
        Step {
            what,
            program,
            args,
        }
    }

    fn lines(plan: &TrustPlan) -> Vec<String> {
        plan.steps.iter().map(|s| s.line(plan.quoting)).collect()
    }

    fn has_note(plan: &TrustPlan, text: &str) -> bool {
        plan.notes.iter().any(|n| n.contains(text))
    }

    #[test]
    fn debian_install_and_uninstall() {
        let plan = plan_install(&debian(), &paths()).unwrap();
        let copy = format!("install -m 0644 {Q_PEM} {DEBIAN_FILE}");
        assert_eq!(lines(&plan), [copy.as_str(), "update-ca-certificates"]);
        assert!(has_note(
            &plan,
            &format!("export NODE_EXTRA_CA_CERTS={Q_PEM}")
        ));
        assert!(has_note(&plan, "no NSS database found"));
        let mut s = sys(Os::Linux, &["update-ca-certificates"], &[]);
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(lines(&plan)[0], format!("mkdir -p {DEBIAN_DIR}"));
        s.system_has_ca = Some(true);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        let rm = format!("rm -f {DEBIAN_FILE}");
        assert_eq!(
            lines(&plan),
            [rm.as_str(), "update-ca-certificates --fresh"]
        );
        assert!(has_note(&plan, "remove that line"));
        s.system_has_ca = Some(false);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert!(plan.steps.is_empty() && has_note(&plan, "not in the system trust store"));
    }

    #[test]
    fn a_jdk_with_its_own_store_gets_the_keytool_lines() {
        let mut s = debian();
        let plan = plan_install(&s, &paths()).unwrap();
        assert!(!has_note(&plan, "keytool"), "no JDK, no JVM note");
        s.jdk = Some(jdk("keytool", true, false));
        let plan = plan_install(&s, &paths()).unwrap();
        assert!(!has_note(&plan, "keytool"), "the system step covers it");
        s.jdk = Some(jdk("/opt/jdk 21/bin/keytool", false, false));
        let plan = plan_install(&s, &paths()).unwrap();
        assert!(has_note(
            &plan,
            "trust the JDK's cacerts, not the system store"
        ));
        let import = format!("'/opt/jdk 21/bin/keytool' -importcert -noprompt -cacerts -storepass changeit -alias keeptrusts-kt -file {Q_PEM}");
        assert!(has_note(&plan, &import), "{:?}", plan.notes);
        s.system_has_ca = Some(true);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert!(has_note(
            &plan,
            "'/opt/jdk 21/bin/keytool' -delete -cacerts -storepass changeit -alias keeptrusts-kt"
        ));
        // The line is for the user's shell: it must be one command there.
        let win = sys(Os::Windows, &[], &[]);
        let win = System {
            jdk: Some(jdk(r"C:\Program Files\Java\bin\keytool.exe", false, false)),
            ..win
        };
        let plan = plan_install(&win, &paths()).unwrap();
        assert!(
            has_note(
                &plan,
                r#""C:\Program Files\Java\bin\keytool.exe" -importcert"#
            ),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn uninstall_takes_the_ca_out_of_a_debian_jdk_store() {
        // ca-certificates-java copies the CA into the JDK's store on
        // install, and keeps it through `update-ca-certificates --fresh`.
        let mut s = debian();
        s.system_has_ca = Some(true);
        s.programs.insert("keytool".into(), "keytool".into());
        s.jdk = Some(jdk("keytool", true, true));
        let plan = plan_uninstall(&s, &paths()).unwrap();
        let delete =
            "keytool -delete -cacerts -storepass changeit -alias debian:keeptrusts-kt-ca.pem";
        assert_eq!(lines(&plan).last().map(String::as_str), Some(delete));
        // Left behind by an earlier uninstall: still taken out.
        s.system_has_ca = Some(false);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert_eq!(lines(&plan), [delete]);
        s.is_root = false;
        s.programs.insert("sudo".into(), "sudo".into());
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert_eq!(lines(&plan), [format!("sudo {delete}")]);
        s.jdk = Some(jdk("keytool", true, false));
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert!(plan.steps.is_empty());
    }

    #[test]
    fn fedora_and_arch() {
        let fedora = sys(Os::Linux, &["update-ca-trust", "trust"], &[FEDORA_DIR]);
        let plan = plan_install(&fedora, &paths()).unwrap();
        let copy = format!("install -m 0644 {Q_PEM} {FEDORA_FILE}");
        assert_eq!(lines(&plan), [copy.as_str(), "update-ca-trust extract"]);
        let plan = plan_uninstall(&fedora, &paths()).unwrap();
        let rm = format!("rm -f {FEDORA_FILE}");
        assert_eq!(lines(&plan), [rm.as_str(), "update-ca-trust extract"]);
        // openSUSE: Debian's command name, its own anchors folder.
        let suse = sys(Os::Linux, &["update-ca-certificates"], &[SUSE_DIR]);
        let plan = plan_install(&suse, &paths()).unwrap();
        let copy = format!("install -m 0644 {Q_PEM} {SUSE_FILE}");
        assert_eq!(lines(&plan), [copy.as_str(), "update-ca-certificates"]);
        let plan = plan_uninstall(&suse, &paths()).unwrap();
        let rm = format!("rm -f {SUSE_FILE}");
        assert_eq!(lines(&plan), [rm.as_str(), "update-ca-certificates"]);
        // Arch ships update-ca-trust too, but not /etc/pki/ca-trust.
        let arch = sys(Os::Linux, &["update-ca-trust", "trust"], &[]);
        let plan = plan_install(&arch, &paths()).unwrap();
        assert_eq!(lines(&plan), [format!("trust anchor --store {Q_PEM}")]);
        let plan = plan_uninstall(&arch, &paths()).unwrap();
        assert_eq!(lines(&plan), [format!("trust anchor --remove {Q_PEM}")]);
    }

    /// Uninstall on Arch after the CA folder is gone: the anchor by the
    /// URI `trust list` gives for the CA's label, and the NSS databases
    /// by nickname; what cannot be found is said.
    #[test]
    fn arch_uninstall_without_the_pem_removes_what_it_can() {
        let mut arch = sys(Os::Linux, &["trust", "certutil"], &[]);
        arch.existing.clear();
        arch.nss_dbs = vec![nss("/home/u/.pki/nssdb", true)];
        let nick = "-n 'Keeptrusts kt local CA'";
        let nss_delete = format!("certutil -D -d sql:/home/u/.pki/nssdb {nick}");
        let plan = plan_uninstall(&arch, &paths()).unwrap();
        assert_eq!(lines(&plan), [nss_delete.as_str()]);
        assert!(has_note(&plan, "is gone") && has_note(&plan, "trust list"));
        let list = "pkcs11:id=%AA%01;type=cert\n    type: certificate\n    label: ACCVRAIZ1\n    trust: anchor\n    category: authority\n\n\
                    pkcs11:id=%BB%02;type=cert\n    type: certificate\n    label: Keeptrusts kt local CA\n    trust: anchor\n    category: authority\n";
        arch.p11_anchors = anchor_uris(list, CA_COMMON_NAME);
        assert_eq!(arch.p11_anchors, ["pkcs11:id=%BB%02;type=cert"]);
        let plan = plan_uninstall(&arch, &paths()).unwrap();
        let remove = "trust anchor --remove 'pkcs11:id=%BB%02;type=cert'";
        assert_eq!(lines(&plan), [remove, nss_delete.as_str()]);
        assert!(!has_note(&plan, "is gone"));
    }

    #[test]
    fn unsupported_systems_and_missing_cert() {
        let none = sys(Os::Linux, &["certutil"], &[]);
        let err = plan_install(&none, &paths()).unwrap_err().to_string();
        assert!(err.contains("no supported system trust tool") && err.contains("by hand"));
        let bsd = sys(Os::Other("freebsd".into()), &[], &[]);
        let err = plan_install(&bsd, &paths()).unwrap_err().to_string();
        assert!(err.contains("not supported on freebsd") && err.contains(PEM));
        assert!(plan_uninstall(&bsd, &paths()).is_err());
        let mut s = debian();
        s.existing.remove(Path::new(PEM));
        let err = plan_install(&s, &paths()).unwrap_err();
        assert!(matches!(err, TrustError::MissingCert { .. }), "{err}");
    }

    #[test]
    fn sudo_prefix_when_not_root() {
        let mut s = sys(
            Os::Linux,
            &["update-ca-certificates", "sudo"],
            &[DEBIAN_DIR],
        );
        s.is_root = false;
        s.programs
            .insert("update-ca-certificates".into(), "/usr/sbin/u-c-c".into());
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(lines(&plan)[1], "sudo /usr/sbin/u-c-c");
        assert!(plan.steps.iter().all(|s| s.program == "sudo"));
        assert!(plan.blocked.is_none());
    }

    #[test]
    fn no_root_no_sudo_prints_plan_but_refuses_to_run() {
        let mut s = debian();
        s.is_root = false;
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(lines(&plan)[1], "update-ca-certificates");
        assert!(has_note(&plan, "must run as root"));
        let err = run(&plan).unwrap_err();
        assert!(matches!(err, TrustError::NeedsRoot { .. }));
        assert!(
            err.to_string().contains("re-run `kt ca install` as root"),
            "{err}"
        );
    }

    /// The thumbprint is the certificate's SHA-1 as the trust tools print
    /// it, read from the DER copy or, without it, from the PEM.
    #[test]
    fn the_thumbprint_names_this_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let (ca, _) = crate::tls::CertificateAuthority::load_or_create(&paths).unwrap();
        let want = sha1_smol::Sha1::from(ca.cert_der().as_ref())
            .digest()
            .to_string()
            .to_ascii_uppercase();
        assert_eq!(want.len(), 40);
        assert_eq!(thumbprint(&paths).as_deref(), Some(want.as_str()));
        std::fs::remove_file(&paths.der).unwrap();
        assert_eq!(thumbprint(&paths).as_deref(), Some(want.as_str()));
        std::fs::remove_file(&paths.cert).unwrap();
        assert_eq!(thumbprint(&paths), None);
    }

    #[test]
    fn macos_plans() {
        let mut s = sys(Os::Mac, &["security", "sudo"], &[]);
        s.is_root = false;
        let plan = plan_install(&s, &paths()).unwrap();
        let add = "sudo security add-trusted-cert -d -r trustRoot -p ssl -p basic -k";
        assert_eq!(lines(&plan), [format!("{add} {MAC_KEYCHAIN} {Q_PEM}")]);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        let del =
            format!("sudo security delete-certificate -c 'Keeptrusts kt local CA' {MAC_KEYCHAIN}");
        let remove = format!("sudo security remove-trusted-cert -d {Q_PEM}");
        assert_eq!(lines(&plan), [remove, del.clone()]);
        s.existing.clear();
        assert_eq!(lines(&plan_uninstall(&s, &paths()).unwrap()), [del]);
        // With the certificate at hand, this certificate is deleted, not
        // whichever carries kt's name (a company CA has another).
        s.thumbprint = Some("0A1B".into());
        assert_eq!(
            lines(&plan_uninstall(&s, &paths()).unwrap()),
            [format!(
                "sudo security delete-certificate -Z 0A1B {MAC_KEYCHAIN}"
            )]
        );
    }

    #[test]
    fn windows_plans_use_der_and_elevation_not_sudo() {
        let mut s = sys(Os::Windows, &["certutil", "sudo"], &[]);
        s.nss_dbs.push(nss("C:/nss", true));
        let plan = plan_install(&s, &paths()).unwrap();
        let add = r#"certutil -addstore -f root "C:\Users\A B\kt\kt-ca.cer""#;
        assert_eq!(lines(&plan), [add]);
        assert!(has_note(
            &plan,
            r#"setx NODE_EXTRA_CA_CERTS "/home/u/kt ca/kt-ca.pem""#
        ));
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert_eq!(
            lines(&plan),
            [r#"certutil -delstore root "Keeptrusts kt local CA""#]
        );
        s.thumbprint = Some("0A1B".into());
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert_eq!(lines(&plan), ["certutil -delstore root 0A1B"]);
        s.thumbprint = None;
        assert!(has_note(&plan, "reg delete"));
        s.is_root = false;
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(plan.steps[0].program, "certutil");
        assert!(has_note(&plan, "elevated"));
        assert!(run(&plan)
            .unwrap_err()
            .to_string()
            .contains("Run as administrator"));
    }

    #[test]
    fn nss_databases_without_sudo() {
        let mut s = sys(
            Os::Linux,
            &["update-ca-certificates", "sudo", "certutil"],
            &[DEBIAN_DIR],
        );
        s.is_root = false;
        let ff = "/home/u/.mozilla/firefox/a b.default";
        s.nss_dbs = vec![nss("/home/u/.pki/nssdb", false), nss(ff, true)];
        let plan = plan_install(&s, &paths()).unwrap();
        let nick = "-n 'Keeptrusts kt local CA'";
        let ff_db = "'sql:/home/u/.mozilla/firefox/a b.default'";
        assert_eq!(
            lines(&plan)[2..],
            [
                format!("certutil -A -d sql:/home/u/.pki/nssdb {nick} -t C,, -i {Q_PEM}"),
                format!("certutil -D -d {ff_db} {nick}"),
                format!("certutil -A -d {ff_db} {nick} -t C,, -i {Q_PEM}"),
            ]
        );
        assert!(!has_note(&plan, "NSS"));
        let plan = plan_uninstall(&s, &paths()).unwrap();
        assert_eq!(
            lines(&plan)[2..],
            [format!("certutil -D -d {ff_db} {nick}")]
        );
        s.programs.remove("certutil");
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(plan.steps.len(), 2);
        assert!(has_note(&plan, "libnss3-tools") && has_note(&plan, "/home/u/.pki/nssdb"));
    }

    /// `sudo kt ca install` updates the NSS databases of the user who ran
    /// sudo (found in that user's home), as that user.
    #[test]
    fn nss_databases_of_the_sudo_user_are_updated_as_that_user() {
        let mut s = sys(
            Os::Linux,
            &["update-ca-certificates", "sudo", "certutil"],
            &[DEBIAN_DIR],
        );
        s.sudo_user = Some("alice".into());
        s.nss_dbs = vec![nss("/home/alice/.pki/nssdb", true)];
        let nick = "-n 'Keeptrusts kt local CA'";
        let db = "sql:/home/alice/.pki/nssdb";
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(
            lines(&plan)[2..],
            [
                format!("sudo -u alice certutil -D -d {db} {nick}"),
                format!("sudo -u alice certutil -A -d {db} {nick} -t C,, -i {Q_PEM}"),
            ]
        );
        assert!(!has_note(&plan, "root's NSS"), "{:?}", plan.notes);
        let plan = plan_uninstall(&s, &paths()).unwrap();
        let remove = format!("sudo -u alice certutil -D -d {db} {nick}");
        assert_eq!(lines(&plan).last(), Some(&remove));
        // Without sudo, root's certutil would leave root's files in them.
        s.programs.remove("sudo");
        let plan = plan_install(&s, &paths()).unwrap();
        assert_eq!(plan.steps.len(), 2);
        assert!(has_note(&plan, "run `kt ca install` as alice"));
    }

    #[test]
    fn quoting_and_render() {
        assert_eq!(quote("it's", Quoting::Posix), r"'it'\''s'");
        assert_eq!(quote("", Quoting::Posix), "''");
        assert_eq!(quote("C,,", Quoting::Posix), "C,,");
        assert_eq!(quote(r"C:\x y", Quoting::Windows), r#""C:\x y""#);
        let plan = plan_install(&debian(), &paths()).unwrap();
        let text = plan.render();
        let copy = format!("install -m 0644 {Q_PEM} {DEBIAN_FILE}\n");
        assert!(text.starts_with(&format!("{copy}update-ca-certificates\n\n")));
        assert!(text.ends_with(&format!("export NODE_EXTRA_CA_CERTS={Q_PEM}\n")));
    }

    /// A rendered line, pasted into sh, gives back the exact argv.
    #[cfg(unix)]
    #[test]
    fn rendered_lines_round_trip_through_sh() {
        let args = [r"%s\n", "a b", "it's", "$HOME", "`x`", "C,,", "sql:/p q"];
        let step = step("printf", &args);
        let script = step.line(Quoting::Posix);
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let want: String = step.args[1..].iter().map(|a| format!("{a}\n")).collect();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    }

    #[cfg(unix)]
    #[test]
    fn run_reports_failures() {
        let plan = |steps| TrustPlan {
            steps,
            ..TrustPlan::default()
        };
        run(&plan(vec![step("true", &[])])).unwrap();
        let fail = step("sh", &["-c", "echo boom >&2; exit 3"]);
        let err = run(&plan(vec![fail, step("false", &[])])).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "`sh -c 'echo boom >&2; exit 3'` failed (exit status: 3): boom"
        );
        let err = run(&plan(vec![step("kt-no-such-program", &[])])).unwrap_err();
        assert!(matches!(err, TrustError::ProgramNotFound { .. }), "{err}");
    }
}
