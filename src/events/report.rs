//! Spend from the audit log: output events summed per user, team, model or
//! provider over a time window, for `kt report costs`.

use super::{segment, Event, EventsError, Phase};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use time::OffsetDateTime;

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Team,
    Model,
    Provider,
}

impl GroupBy {
    /// The field's value in `e`; `None` when the event has none.
    fn key(self, e: &Event) -> Option<&str> {
        match self {
            GroupBy::User => e.user.as_deref(),
            GroupBy::Team => e.team.as_deref(),
            GroupBy::Model => e.model.as_deref(),
            GroupBy::Provider => e.provider.as_deref(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
        }
    }
}

/// Sums of one group.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Row {
    /// The user, team, model or provider; `(none)` for events without one.
    pub key: String,
    /// Exchanges that got an answer (output events).
    pub requests: u64,
    /// Of which kt or the provider failed.
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Sum over the requests whose model has a price.
    pub cost_usd: f64,
    /// Requests with tokens but no price (unknown model): not in `cost_usd`.
    pub unpriced: u64,
    /// Requests whose tokens are estimates.
    pub estimated: u64,
    /// Requests answered from the engineering cache.
    pub cache_hits: u64,
    /// What those answers cost when first fetched.
    pub saved_usd: f64,
}

impl Row {
    fn add(&mut self, e: &Event) {
        self.requests += 1;
        if e.action == super::Action::Error {
            self.errors += 1;
        }
        // The log's counts may come from a hostile upstream (or an older
        // kt that did not clamp them): a sum sticks at the top rather than
        // panicking or wrapping.
        self.tokens_in = self.tokens_in.saturating_add(e.tokens_in.unwrap_or(0));
        self.tokens_out = self.tokens_out.saturating_add(e.tokens_out.unwrap_or(0));
        match e.cost_usd {
            Some(c) => self.cost_usd += c,
            None if e.tokens_in.is_some() || e.tokens_out.is_some() => self.unpriced += 1,
            None => {}
        }
        if e.usage_source.as_deref() == Some("estimated") {
            self.estimated += 1;
        }
        if e.cache_hit == Some(true) {
            self.cache_hits += 1;
        }
        self.saved_usd += e.cost_saved_usd.unwrap_or(0.0);
    }
}

/// A whole report: one row per group, most expensive first, and the total.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub total: Row,
    /// Lines that were not events (a torn last line, an edited file):
    /// skipped, and `kt events verify` says more.
    pub unreadable: u64,
}

/// Sums the output events at or after `since` (all of them for `None`).
pub fn costs(
    dir: &Path,
    by: GroupBy,
    since: Option<OffsetDateTime>,
) -> Result<Report, EventsError> {
    let first_day = since.map(|t| t.to_offset(time::UtcOffset::UTC).date());
    let mut tally = Tally::new(by, since);
    for seg in segment::list(dir)? {
        // A segment holds events from its day on; rolled segments of an
        // earlier day may run past midnight, so only whole earlier days go.
        if first_day.is_some_and(|d| seg.date < d.previous_day().unwrap_or(d)) {
            continue;
        }
        let file = std::fs::File::open(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        // Split on bytes: a line that is not UTF-8 (a damaged file) is one
        // unreadable line, not the end of the report.
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| EventsError::io(&seg.path, e))?;
            match std::str::from_utf8(&line) {
                Ok(text) => tally.add_line(text),
                Err(_) => tally.report.unreadable += 1,
            }
        }
    }
    Ok(tally.finish())
}

/// A report being summed, line by line, from whatever holds the events
/// (the local log, or the shared table in hosted mode).
pub struct Tally {
    by: GroupBy,
    cutoff: Option<String>,
    groups: BTreeMap<String, Row>,
    report: Report,
}

impl Tally {
    /// Sums output events at or after `since`, grouped `by`.
    pub fn new(by: GroupBy, since: Option<OffsetDateTime>) -> Tally {
        Tally {
            by,
            cutoff: since.map(super::format_ts),
            groups: BTreeMap::new(),
            report: Report::default(),
        }
    }

    /// Adds one stored event line (blank lines are skipped, unreadable
    /// ones counted).
    pub fn add_line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(event) = serde_json::from_str::<Event>(line) else {
            self.report.unreadable += 1;
            return;
        };
        if event.phase != Phase::Output {
            return;
        }
        if self
            .cutoff
            .as_ref()
            .is_some_and(|c| event.ts.as_str() < c.as_str())
        {
            return;
        }
        let key = self.by.key(&event).unwrap_or("(none)");
        self.groups
            .entry(key.to_string())
            .or_insert_with(|| Row {
                key: key.to_string(),
                ..Row::default()
            })
            .add(&event);
        self.report.total.add(&event);
    }

    /// The rows, most expensive first, and the total.
    pub fn finish(self) -> Report {
        let mut report = self.report;
        report.total.key = "TOTAL".into();
        report.rows = self.groups.into_values().collect();
        report.rows.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then(b.requests.cmp(&a.requests))
                .then(a.key.cmp(&b.key))
        });
        report
    }
}

/// Reads `--since`: a span back from `now` (`30m`, `24h`, `7d`, `2w`), a
/// day (`2026-11-01`, from its start in UTC) or an RFC 3339 time.
pub fn parse_since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a time: use a span like 30m, 24h, 7d or 2w, a day like 2026-11-01, or an RFC 3339 time"
        )
    };
    // The time forms first: an RFC 3339 time in UTC ends in a letter too
    // (`Z`), and taking every trailing letter for a span's unit refused it.
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    if let Ok(day) = time::Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    ) {
        return Ok(day.midnight().assume_utc());
    }
    let Some(unit) = text.chars().last() else {
        return Err(bad());
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    // Digits only: `parse` would also take a sign (`+7d`, `-1d`).
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_seconds: i64 = match unit {
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(bad()),
    };
    // Multiplied here, checked: the time crate's days() and weeks() panic
    // on a span too long to hold (`--since 999999999999999d`).
    let span = n
        .checked_mul(unit_seconds)
        .map(time::Duration::seconds)
        .ok_or_else(bad)?;
    now.checked_sub(span).ok_or_else(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::{Action, EventLog, LogOptions};

    fn output(user: Option<&str>, model: &str, tokens: (u64, u64), cost: Option<f64>) -> Event {
        let mut e = Event::new(Phase::Output, Action::Pass);
        e.user = user.map(Into::into);
        e.model = Some(model.into());
        e.provider = Some("openai".into());
        e.tokens_in = Some(tokens.0);
        e.tokens_out = Some(tokens.1);
        e.cost_usd = cost;
        e
    }

    async fn log(dir: &Path, events: Vec<Event>) {
        let (sink, writer) = EventLog::open(dir, LogOptions::default()).unwrap();
        for e in events {
            sink.send(e).await.unwrap();
        }
        drop(sink);
        writer.close().await.unwrap();
    }

    #[test]
    fn huge_token_counts_saturate() {
        let mut row = Row::default();
        let e = output(None, "gpt-4o", (u64::MAX, u64::MAX), None);
        row.add(&e);
        row.add(&e);
        assert_eq!((row.tokens_in, row.tokens_out), (u64::MAX, u64::MAX));
    }

    #[tokio::test]
    async fn sums_per_group_most_expensive_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut input = Event::new(Phase::Input, Action::Pass);
        input.user = Some("dev1".into());
        let mut estimated = output(Some("dev2"), "gpt-4o", (10, 10), Some(0.5));
        estimated.usage_source = Some("estimated".into());
        log(
            tmp.path(),
            vec![
                input,
                output(Some("dev1"), "gpt-4o", (100, 50), Some(0.25)),
                output(Some("dev1"), "house", (7, 3), None),
                estimated,
                output(None, "gpt-4o", (1, 1), Some(0.125)),
            ],
        )
        .await;
        let r = costs(tmp.path(), GroupBy::User, None).unwrap();
        let keys: Vec<&str> = r.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["dev2", "dev1", "(none)"]);
        let dev1 = &r.rows[1];
        assert_eq!(
            (
                dev1.requests,
                dev1.tokens_in,
                dev1.tokens_out,
                dev1.unpriced
            ),
            (2, 107, 53, 1)
        );
        assert!((dev1.cost_usd - 0.25).abs() < 1e-12);
        assert_eq!(r.rows[0].estimated, 1);
        assert_eq!(r.total.requests, 4, "input events are not requests");
        assert!((r.total.cost_usd - 0.875).abs() < 1e-12);

        let by_model = costs(tmp.path(), GroupBy::Model, None).unwrap();
        assert_eq!(by_model.rows[0].key, "gpt-4o");
        assert_eq!(by_model.rows[0].requests, 3);
    }

    #[tokio::test]
    async fn since_leaves_out_older_events_and_bad_lines_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut old = output(Some("dev1"), "gpt-4o", (1, 1), Some(1.0));
        old.ts = "2020-01-01T00:00:00.000Z".into();
        log(
            tmp.path(),
            vec![old, output(Some("dev1"), "gpt-4o", (1, 1), Some(2.0))],
        )
        .await;
        let seg = segment::list(tmp.path()).unwrap().pop().unwrap();
        let mut text = std::fs::read_to_string(&seg.path).unwrap();
        text.push_str("{torn\n");
        let mut bytes = text.into_bytes();
        // A damaged line that is not even UTF-8, with a good one after it.
        bytes.extend_from_slice(b"{\"ts\":\"\xff\xfe\"}\n");
        let after =
            serde_json::to_string(&output(Some("dev3"), "gpt-4o", (1, 1), Some(4.0))).unwrap();
        bytes.extend_from_slice(after.as_bytes());
        bytes.push(b'\n');
        std::fs::write(&seg.path, bytes).unwrap();

        let all = costs(tmp.path(), GroupBy::User, None).unwrap();
        assert!((all.total.cost_usd - 7.0).abs() < 1e-12, "{all:?}");
        assert_eq!(all.unreadable, 2);
        let since = parse_since("7d", OffsetDateTime::now_utc()).unwrap();
        let recent = costs(tmp.path(), GroupBy::User, Some(since)).unwrap();
        assert!((recent.total.cost_usd - 6.0).abs() < 1e-12);
    }

    #[test]
    fn since_forms() {
        let now = OffsetDateTime::parse(
            "2026-11-23T10:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ts = |s: &str| crate::events::format_ts(parse_since(s, now).unwrap());
        assert_eq!(ts("7d"), "2026-11-16T10:00:00.000Z");
        assert_eq!(ts("24h"), "2026-11-22T10:00:00.000Z");
        assert_eq!(ts("30m"), "2026-11-23T09:30:00.000Z");
        assert_eq!(ts("2w"), "2026-11-09T10:00:00.000Z");
        assert_eq!(ts("2026-11-01"), "2026-11-01T00:00:00.000Z");
        assert_eq!(ts("2026-11-20T08:00:00+01:00"), "2026-11-20T07:00:00.000Z");
        // UTC times end in a letter, as spans do; both cases are RFC 3339.
        assert_eq!(ts("2026-11-20T08:00:00Z"), "2026-11-20T08:00:00.000Z");
        assert_eq!(ts("2026-11-20t08:00:00.5z"), "2026-11-20T08:00:00.500Z");
        for bad in [
            "",
            "7",
            "7x",
            "-1d",
            "+1d",
            "d",
            "yesterday",
            "2026-13-01",
            "2026-11-20T08:00:00",
            "7\u{e9}",
            // Too long for any clock: refused, not a panic.
            "999999999999999d",
            "99999999999999999w",
            "9223372036854775807m",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
