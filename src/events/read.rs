//! Reading the audit log back: last N events, following it as it grows, `--filter`, and the one-line text format of `kt events tail`.
