//! Writing a settings file safely: a timestamped backup of the old one
//! first, then the new text through a temporary file and a rename, and
//! marked blocks that a later run replaces instead of appending again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a settings file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot back up {path} to {backup}: {source}")]
    Backup {
        path: PathBuf,
        backup: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{link} is a symbolic link to {target}, which does not exist; kt does not replace the link with a file: create {target} (or remove the link) and run again")]
    DanglingLink { link: PathBuf, target: PathBuf },
}

/// The file's text, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces `path` with `text`, copying an existing file to
/// `PATH.bak-YYYYMMDD-HHMMSS` first; returns the backup's path.
///
/// A symbolic link (a dotfiles repository) is written through: its
/// target gets the new text and the link stays a link; a target that
/// cannot be written (home-manager's, in the read-only /nix/store) is an
/// error naming it, the link untouched. A hard
/// link is not: the rename gives `path` a new file, and the other names
/// keep the old text.
pub fn replace_with_backup(path: &Path, text: &str) -> Result<Option<PathBuf>, FileError> {
    let write_err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    // The backup stays next to the name the user gave (not in the
    // dotfiles folder); the temporary file and the rename go to the target.
    let target = link_target(path)?;
    let target = target.as_deref().unwrap_or(path);
    let backup = if path.exists() {
        let backup = backup_path(path);
        fs::copy(path, &backup).map_err(|source| FileError::Backup {
            path: path.to_path_buf(),
            backup: backup.clone(),
            source,
        })?;
        Some(backup)
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        None
    };
    // Named after the file written, the link's target (a read-only one,
    // as home-manager's in /nix/store, is refused there).
    let write_err = |source| FileError::Write {
        path: target.to_path_buf(),
        source,
    };
    write_atomically(target, text).map_err(write_err)?;
    Ok(backup)
}

/// Replaces `target` with `text` through a new file beside it and a
/// rename, so a reader sees the old text or the new, never a part.
///
/// The temporary file is created exclusively (a link planted under its
/// name is not followed), under a name no other run uses, and with the
/// replaced file's mode from the start: a 0600 profile's new text is
/// never readable by others, not even until a chmod. It is removed when
/// anything fails.
fn write_atomically(target: &Path, text: &str) -> io::Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .map_or_else(|| "settings".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.kt-tmp-{:016x}", rand::random::<u64>()));
    let old_mode = fs::metadata(target).ok().map(|m| m.permissions());
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(perm) = &old_mode {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            options.mode(perm.mode() & 0o7777);
        }
        let mut f = options.open(&tmp)?;
        // The umask may have narrowed the mode given at creation
        // (a 0664 file under umask 022): set it exactly.
        if let Some(perm) = old_mode {
            f.set_permissions(perm)?;
        }
        io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The file a symbolic link at `path` leads to (through any chain of
/// links); `None` when `path` is not a link. A link to nothing is an error:
/// writing there would replace the link, and creating its target could
/// mean creating folders in someone's dotfiles.
fn link_target(path: &Path) -> Result<Option<PathBuf>, FileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        _ => return Ok(None),
    }
    match fs::canonicalize(path) {
        Ok(target) => Ok(Some(target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let to = fs::read_link(path).unwrap_or_default();
            let target = match path.parent() {
                Some(dir) => dir.join(to),
                None => to,
            };
            Err(FileError::DanglingLink {
                link: path.to_path_buf(),
                target,
            })
        }
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `PATH.bak-YYYYMMDD-HHMMSS` (UTC), with `-N` added if that exists.
fn backup_path(path: &Path) -> PathBuf {
    let t = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let base = format!("{}.bak-{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// The start and end marker lines of kt's block, in a language whose line
/// comments start with `comment`.
fn markers(comment: &str) -> (String, String) {
    (
        format!("{comment} >>> kt setup >>>"),
        format!("{comment} <<< kt setup <<<"),
    )
}

/// kt's start marker with no end marker after it (the end line was
/// deleted or edited): where the block ends is unknown, so nothing after
/// the start line can be told apart from the user's own lines.
#[derive(Debug, thiserror::Error)]
#[error("line {line} starts kt's block (`{start}`) but no `{end}` line follows it, so kt cannot tell its lines from yours and changed nothing: put the end line back after kt's lines (or delete them with the start line) and run again")]
pub struct UnclosedBlock {
    pub line: usize,
    pub start: String,
    pub end: String,
}

/// `text` with kt's marked block set to `body`: an existing block is
/// replaced in place, otherwise the block is appended. `None` when the
/// block already says exactly that. The block's lines end as the file's
/// first line does (CRLF in a profile or init.el saved on Windows).
pub fn set_block(text: &str, comment: &str, body: &str) -> Result<Option<String>, UnclosedBlock> {
    let (start, end) = markers(comment);
    let eol = match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    };
    let mut block = format!("{start}{eol}");
    for line in body.lines() {
        block.push_str(line);
        block.push_str(eol);
    }
    block.push_str(&end);
    block.push_str(eol);
    if let Some((a, b)) = find_block(text, &start, &end)? {
        if text[a..b] == block {
            return Ok(None);
        }
        return Ok(Some(format!("{}{block}{}", &text[..a], &text[b..])));
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(eol);
    }
    if !out.is_empty() {
        out.push_str(eol);
    }
    out.push_str(&block);
    Ok(Some(out))
}

/// The byte range of kt's block in `text`, from its start line to the end
/// of its end line. A start line without an end line before the next start
/// line (or the end of the text) is an error: appending another block
/// would leave the orphan, and the next run would take everything from it
/// to the new end line for kt's own.
fn find_block(text: &str, start: &str, end: &str) -> Result<Option<(usize, usize)>, UnclosedBlock> {
    let unclosed = |line| UnclosedBlock {
        line,
        start: start.to_string(),
        end: end.to_string(),
    };
    // The open block's line number and byte offset.
    let mut open: Option<(usize, usize)> = None;
    let mut at = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let content = line.strip_suffix('\n').unwrap_or(line);
        // A CRLF file's marker lines: before, they were not recognised
        // and every run appended another block.
        let content = content.strip_suffix('\r').unwrap_or(content);
        if content == start {
            if let Some((first, _)) = open {
                return Err(unclosed(first));
            }
            open = Some((n + 1, at));
        } else if content == end {
            if let Some((_, a)) = open {
                return Ok(Some((a, at + line.len())));
            }
        }
        at += line.len();
    }
    match open {
        Some((line, _)) => Err(unclosed(line)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_appended_once_then_replaced_in_place() {
        let profile = "alias ll='ls -l'\n";
        let once = set_block(profile, "#", "export A=1").unwrap().unwrap();
        assert_eq!(
            once,
            "alias ll='ls -l'\n\n# >>> kt setup >>>\nexport A=1\n# <<< kt setup <<<\n"
        );
        assert_eq!(set_block(&once, "#", "export A=1").unwrap(), None);
        let mut edited = once.clone();
        edited.push_str("export PATH=$PATH:~/bin\n");
        let changed = set_block(&edited, "#", "export A=2\n").unwrap().unwrap();
        assert_eq!(
            changed,
            "alias ll='ls -l'\n\n# >>> kt setup >>>\nexport A=2\n# <<< kt setup <<<\nexport PATH=$PATH:~/bin\n"
        );
        assert_eq!(
            set_block("", ";;", "(x)").unwrap().unwrap(),
            ";; >>> kt setup >>>\n(x)\n;; <<< kt setup <<<\n"
        );
    }

    /// The end line deleted: before, the first run appended a second
    /// block and the second run took the user's lines between the orphan
    /// start and the new end for kt's block and deleted them.
    #[test]
    fn a_block_without_its_end_line_is_refused() {
        let profile = "alias ll='ls -l'\n# >>> kt setup >>>\nexport A=1\nexport MINE=1\n";
        let err = set_block(profile, "#", "export A=2").unwrap_err();
        assert_eq!(err.line, 2);
        let msg = err.to_string();
        assert!(
            msg.contains("line 2") && msg.contains("# <<< kt setup <<<"),
            "{msg}"
        );
        // What the old first run left: the orphan start, the user's line,
        // then a whole block.
        let doubled = format!("{profile}\n# >>> kt setup >>>\nexport A=1\n# <<< kt setup <<<\n");
        assert_eq!(set_block(&doubled, "#", "export A=2").unwrap_err().line, 2);
    }

    /// A profile with CRLF line ends gets a CRLF block, found again by
    /// the next run (before: an LF block, and once the file was saved with
    /// CRLF throughout, a new block appended on every run).
    #[test]
    fn crlf_files_get_a_crlf_block_replaced_in_place() {
        let profile = "alias ll='ls -l'\r\n";
        let once = set_block(profile, "#", "export A=1\n").unwrap().unwrap();
        assert_eq!(
            once,
            "alias ll='ls -l'\r\n\r\n# >>> kt setup >>>\r\nexport A=1\r\n# <<< kt setup <<<\r\n"
        );
        assert_eq!(set_block(&once, "#", "export A=1").unwrap(), None);
        let changed = set_block(&once, "#", "export A=2").unwrap().unwrap();
        assert_eq!(changed, once.replace("A=1", "A=2"));
        assert_eq!(changed.matches(">>> kt setup >>>").count(), 1);
    }

    #[test]
    fn replacing_keeps_a_timestamped_backup() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/settings.json");
        assert_eq!(replace_with_backup(&f, "{}\n").unwrap(), None);
        let b1 = replace_with_backup(&f, "{\"a\": 1}\n").unwrap().unwrap();
        let b2 = replace_with_backup(&f, "{\"a\": 2}\n").unwrap().unwrap();
        assert_ne!(b1, b2);
        assert!(b1.to_string_lossy().contains("settings.json.bak-"));
        assert_eq!(fs::read_to_string(&b1).unwrap(), "{}\n");
        assert_eq!(fs::read_to_string(&b2).unwrap(), "{\"a\": 1}\n");
        assert_eq!(read_optional(&f).unwrap().as_deref(), Some("{\"a\": 2}\n"));
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
    }

    /// The files kt's writes left in `dir` under a temporary name.
    fn temporaries(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("kt-tmp"))
            .collect()
    }

    /// A 0600 profile keeps its mode (the new file is made with it).
    #[cfg(unix)]
    #[test]
    fn a_private_file_stays_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".bashrc");
        fs::write(&f, "alias ll='ls -l'\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        replace_with_backup(&f, "export A=1\n").unwrap().unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "export A=1\n");
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    }

    /// A rename that fails (here: the target is a folder) leaves no
    /// temporary file behind; before, `NAME.kt-tmp` stayed.
    #[test]
    fn a_failed_replacement_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("settings.json");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), "x").unwrap();
        assert!(write_atomically(&target, "{}\n").is_err());
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
        assert_eq!(fs::read_to_string(target.join("inside")).unwrap(), "x");
    }

    /// `~/.bashrc -> dotfiles/bashrc`: the target gets the new text and
    /// the link is still a link (it became a regular file before).
    #[cfg(unix)]
    #[test]
    fn a_symlinked_file_is_written_through_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let dotfiles = dir.path().join("dotfiles");
        fs::create_dir(&dotfiles).unwrap();
        let target = dotfiles.join("bashrc");
        fs::write(&target, "alias ll='ls -l'\n").unwrap();
        let link = dir.path().join(".bashrc");
        std::os::unix::fs::symlink("dotfiles/bashrc", &link).unwrap();
        let backup = replace_with_backup(&link, "export A=1\n").unwrap().unwrap();
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read_to_string(&target).unwrap(), "export A=1\n");
        assert_eq!(fs::read_to_string(&backup).unwrap(), "alias ll='ls -l'\n");
        assert_eq!(temporaries(&dotfiles), Vec::<String>::new());

        // A link to nothing is refused, naming both, and left as it is.
        let dangling = dir.path().join(".zshrc");
        std::os::unix::fs::symlink("dotfiles/zshrc", &dangling).unwrap();
        let err = replace_with_backup(&dangling, "x\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FileError::DanglingLink { .. }), "{msg}");
        assert!(
            msg.contains(".zshrc") && msg.contains("dotfiles/zshrc"),
            "{msg}"
        );
        assert!(fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!dotfiles.join("zshrc").exists());
    }
}
