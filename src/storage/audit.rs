//! Reading the shared table as a whole: checking every replica's chain
//! (`kt events verify --storage`) and cost reports (`kt report costs
//! --storage`). Rows are streamed, never loaded all at once.

use super::{Db, StorageError};
use crate::events::report::{GroupBy, Report, Tally};
use crate::events::verify::{check_line, Checkpoints, Problem};
use crate::events::VerifyReport;
use futures_util::{pin_mut, TryStreamExt};
use time::OffsetDateTime;

/// One replica's chain as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub replica: String,
    pub events: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The hash of its last event (empty for a replica with none).
    pub last_hash: String,
    /// Whether its first event is the first its log ever wrote (else it
    /// continues after an event the log shipped under another name).
    pub from_genesis: bool,
}

/// Where a replica's chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("replica {replica} seq {seq}: {problem}")]
    Line {
        replica: String,
        seq: i64,
        problem: Problem,
    },
    #[error("replica {replica} seq {seq}: the row's hash column does not match its event")]
    Column { replica: String, seq: i64 },
    #[error("replica {replica}: sequence jumps from {after} to {seq}: rows deleted")]
    Gap {
        replica: String,
        after: i64,
        seq: i64,
    },
    #[error("replica {replica}: its first row is seq {seq}, not 1: rows deleted from its start")]
    Start { replica: String, seq: i64 },
    #[error("replica {replica}: rows up to seq {last_seq} but no head in kt_replicas: its head row was deleted")]
    Headless { replica: String, last_seq: i64 },
    #[error("replica {replica}: its head says seq {head_seq} ({head_hash}) but the last row is seq {last_seq}: rows deleted or added behind the shipper")]
    Head {
        replica: String,
        head_seq: i64,
        head_hash: String,
        last_seq: i64,
    },
}

/// The outcome of checking the whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    pub chains: Vec<ChainReport>,
    pub broken: Vec<Broken>,
}

/// Checks every replica's chain: each row's hash, its link to the row
/// before, the sequence from 1 without gaps, and the head matching the
/// last row;
/// notes in `checkpoints` each of them some chain holds. Replicas are
/// those with a head or with rows: rows whose head was deleted still count
/// in reports and feeds, so they are checked too, and reported.
pub async fn verify(db: &Db, checkpoints: &mut Checkpoints) -> Result<TableReport, StorageError> {
    let conn = db.conn().await?;
    let heads = conn
        .query(
            "SELECT r.replica, h.last_seq, h.last_hash
             FROM (SELECT replica FROM kt_replicas UNION SELECT replica FROM kt_events) AS r
             LEFT JOIN kt_replicas AS h USING (replica)
             ORDER BY r.replica",
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    let mut out = TableReport::default();
    for head in heads {
        let replica: String = head.get(0);
        let stored: Option<(i64, String)> = head
            .get::<_, Option<i64>>(1)
            .zip(head.get::<_, Option<String>>(2));
        let rows = conn
            .query_raw(
                "SELECT seq, hash, line FROM kt_events WHERE replica = $1 ORDER BY seq",
                [&replica],
            )
            .await
            .map_err(|e| db.err(e))?;
        pin_mut!(rows);
        let mut chain = VerifyReport {
            segments: 0,
            events: 0,
            anchor: None,
            last_hash: None,
            incomplete_tail: false,
            adopted: false,
            unanchored_segments: 0,
        };
        let (mut first, mut last) = (0i64, 0i64);
        let mut broken = None;
        while let Some(row) = rows.try_next().await.map_err(|e| db.err(e))? {
            let seq: i64 = row.get(0);
            let hash: &str = row.get(1);
            let line: &str = row.get(2);
            if chain.events == 0 {
                first = seq;
                // Shippers number a chain from 1 and kt never deletes rows:
                // a later first row means its oldest ones were deleted, and
                // the first one left would otherwise pass as the start.
                if seq != 1 {
                    broken = Some(Broken::Start {
                        replica: replica.clone(),
                        seq,
                    });
                    break;
                }
            } else if seq != last + 1 {
                broken = Some(Broken::Gap {
                    replica: replica.clone(),
                    after: last,
                    seq,
                });
                break;
            }
            if let Err(problem) = check_line(line.as_bytes(), &mut chain) {
                broken = Some(Broken::Line {
                    replica: replica.clone(),
                    seq,
                    problem,
                });
                break;
            }
            if chain.last_hash.as_deref() != Some(hash) {
                broken = Some(Broken::Column {
                    replica: replica.clone(),
                    seq,
                });
                break;
            }
            checkpoints.see(hash);
            last = seq;
        }
        if broken.is_none() {
            broken = match stored {
                None => Some(Broken::Headless {
                    replica: replica.clone(),
                    last_seq: last,
                }),
                Some((head_seq, head_hash))
                    if last != head_seq || chain.last_hash.as_deref() != Some(&head_hash) =>
                {
                    Some(Broken::Head {
                        replica: replica.clone(),
                        head_seq,
                        head_hash,
                        last_seq: last,
                    })
                }
                Some(_) => None,
            };
        }
        match broken {
            Some(b) => out.broken.push(b),
            None => out.chains.push(ChainReport {
                replica,
                events: chain.events,
                first_seq: first,
                last_seq: last,
                from_genesis: chain.from_genesis(),
                last_hash: chain.last_hash.unwrap_or_default(),
            }),
        }
    }
    Ok(out)
}

/// Spend from the shared table: output events at or after `since`.
pub async fn costs(
    db: &Db,
    by: GroupBy,
    since: Option<OffsetDateTime>,
) -> Result<Report, StorageError> {
    let conn = db.conn().await?;
    let from = since.map(crate::events::format_ts);
    let rows = conn
        .query_raw(
            "SELECT line FROM kt_events
             WHERE ($1::text IS NULL OR ts >= $1::timestamptz) AND event->>'phase' = 'output'
             ORDER BY id",
            [&from],
        )
        .await
        .map_err(|e| db.err(e))?;
    pin_mut!(rows);
    let mut tally = Tally::new(by, since);
    while let Some(row) = rows.try_next().await.map_err(|e| db.err(e))? {
        tally.add_line(row.get(0));
    }
    Ok(tally.finish())
}
