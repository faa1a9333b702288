//! `kt keys create | list | revoke`: manage the access keys in the
//! configured store (`<home>/keys.json` by default, or the shared
//! database of a hosted gateway).

use super::store::{runtime, Store, StoreArgs};
use super::HomeArgs;
use crate::keys::file::{self, KeyRecord, Revoked};
use crate::storage::keys as pg;
use anyhow::Context as _;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an access key and print it. It is shown this once only.
    Create {
        /// Who the key belongs to (shown in events and cost reports).
        #[arg(long, value_name = "NAME")]
        user: String,
        /// The user's team (for team-scoped caches, budgets and reports).
        #[arg(long, value_name = "TEAM")]
        team: Option<String>,
        /// May read the admin routes (`/_kt/events`, `/_kt/`).
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the access keys (never the keys themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an access key by id; running gateways refuse it within a second.
    Revoke {
        /// The key's id, as `kt keys list` shows it (`key_…`).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The key file of a folder store.
fn keys_file(dir: &Path) -> PathBuf {
    dir.join(crate::keys::KEYS_FILE)
}

pub fn run(home: &HomeArgs, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create {
            user,
            team,
            admin,
            store,
        } => {
            let (created, place) = match store.resolve(home)? {
                Store::Files(dir) => {
                    let path = keys_file(&dir);
                    let created = file::create(&path, &user, team.as_deref(), admin)
                        .context("cannot create the access key")?;
                    (created, path.display().to_string())
                }
                Store::Postgres(url) => runtime()?.block_on(async {
                    let db = Store::db(&url).await?;
                    let created = pg::create(&db, &user, team.as_deref(), admin)
                        .await
                        .context("cannot create the access key")?;
                    anyhow::Ok((created, db.shown().to_string()))
                })?,
            };
            println!("{}", created.key);
            let r = &created.record;
            eprintln!(
                "created access key {} for user {}{}{} in {place}",
                r.id,
                r.user,
                r.team
                    .as_deref()
                    .map(|t| format!(" (team {t})"))
                    .unwrap_or_default(),
                if r.admin { ", with admin rights" } else { "" },
            );
            eprintln!("it is shown only this once: store it now (kt keeps only a salted hash)");
            eprintln!(
                "  proxy clients : HTTPS_PROXY=http://{}:KEY@HOST:41002",
                r.user
            );
            eprintln!("  admin/API     : Authorization: Bearer KEY");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { json, store } => {
            let (keys, place) = match store.resolve(home)? {
                Store::Files(dir) => {
                    let path = keys_file(&dir);
                    (file::load(&path)?.keys, path.display().to_string())
                }
                Store::Postgres(url) => runtime()?.block_on(async {
                    let db = Store::db(&url).await?;
                    anyhow::Ok((pg::list(&db).await?.keys, db.shown().to_string()))
                })?,
            };
            if json {
                let rows: Vec<_> = keys.iter().map(json_row).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if keys.is_empty() {
                eprintln!(
                    "no access keys in {place}; create one with `kt keys create --user NAME`"
                );
            } else {
                print!("{}", table(&keys));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id, store } => {
            let revoked = match store.resolve(home)? {
                Store::Files(dir) => file::revoke(&keys_file(&dir), &id)?,
                Store::Postgres(url) => runtime()?.block_on(async {
                    let db = Store::db(&url).await?;
                    anyhow::Ok(pg::revoke(&db, &id).await?)
                })?,
            };
            match revoked {
                Revoked::Now(r) => eprintln!(
                    "revoked {} (user {}); running gateways refuse it within a second",
                    r.id, r.user
                ),
                Revoked::Already(r) => eprintln!(
                    "{} (user {}) was already revoked at {}",
                    r.id,
                    r.user,
                    r.revoked_at.as_deref().unwrap_or("?")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A key's public facts (no lookup tag, salt or hash).
fn json_row(r: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "user": r.user,
        "team": r.team,
        "admin": r.admin,
        "created": r.created,
        "revoked_at": r.revoked_at,
        "status": if r.is_active() { "active" } else { "revoked" },
    })
}

/// `ID USER TEAM ADMIN CREATED STATUS`, columns padded to fit.
fn table(keys: &[KeyRecord]) -> String {
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.user.clone(),
                r.team.clone().unwrap_or_else(|| "-".into()),
                if r.admin { "yes" } else { "no" }.into(),
                r.created.clone(),
                match &r.revoked_at {
                    None => "active".into(),
                    Some(at) => format!("revoked {at}"),
                },
            ]
        })
        .collect();
    let head = ["ID", "USER", "TEAM", "ADMIN", "CREATED", "STATUS"].map(String::from);
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_shows_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let a = file::create(&path, "dev1", Some("platform"), false).unwrap();
        let b = file::create(&path, "operations", None, true).unwrap();
        file::revoke(&path, &b.record.id).unwrap();
        let keys = file::load(&path).unwrap().keys;
        let t = table(&keys);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID") && lines[0].ends_with("STATUS"));
        let col = lines[0].find("USER").unwrap();
        assert_eq!(&lines[1][col..col + 4], "dev1", "{t}");
        assert!(lines[1].ends_with("active") && lines[2].contains("revoked 2"));
        for k in &keys {
            assert!(!t.contains(&k.hash) && !t.contains(&k.salt) && !t.contains(&k.lookup));
        }
        assert!(!t.contains(&a.key[3..]));
        let json = serde_json::to_string(&keys.iter().map(json_row).collect::<Vec<_>>()).unwrap();
        assert!(!json.contains(&keys[0].hash) && !json.contains("salt"));
    }
}
