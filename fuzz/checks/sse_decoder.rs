//! `llm::sse::SseDecoder` on arbitrary bytes fed in arbitrary chunks.
//!
//! Input layout: byte 0 picks the frame limit (even: the 1 MiB default, odd:
//! a small limit so `EventTooLarge` is reached) and how many cuts follow (up
//! to 7, as little-endian `u16` offsets); the rest is the stream.
//!
//! Checks: no panic; the chunked feed (drained after every chunk, as the
//! proxy does) yields the same frames and errors as one whole feed; without
//! `EventTooLarge` the frames' raw bytes put back together are the input and
//! nothing is left pending. The frames also go through `StreamTally` for
//! every family (no panic on any event data).

use keeptrusts::llm::family::Family;
use keeptrusts::llm::sse::{SseDecoder, SseError, SseEvent, DEFAULT_MAX_EVENT_SIZE};
use keeptrusts::llm::stream::StreamTally;

/// One decoder outcome, comparable across runs.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Frame(SseEvent),
    TooLarge(usize),
    Incomplete(SseEvent),
}

fn drain(dec: &mut SseDecoder, out: &mut Vec<Out>) {
    while let Some(r) = dec.next_event() {
        out.push(match r {
            Ok(ev) => Out::Frame(ev),
            Err(SseError::EventTooLarge { limit }) => Out::TooLarge(limit),
            Err(SseError::Incomplete(ev)) => Out::Incomplete(*ev),
        });
    }
}

fn decode<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
    drain_each: bool,
) -> Vec<Out> {
    let mut dec = SseDecoder::with_max_event_size(max);
    let mut out = Vec::new();
    for c in chunks {
        dec.feed(c);
        if drain_each {
            drain(&mut dec, &mut out);
        }
    }
    dec.finish();
    drain(&mut dec, &mut out);
    let failed = out.iter().any(|o| matches!(o, Out::TooLarge(_)));
    if !failed {
        assert_eq!(dec.pending_len(), 0, "bytes left pending after finish");
    }
    out
}

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let max = if head & 1 == 0 {
        DEFAULT_MAX_EVENT_SIZE
    } else {
        usize::from(head >> 4) * 8 + 1
    };
    let ncuts = usize::from((head >> 1) & 7);
    let (cut_bytes, input) = rest.split_at(rest.len().min(ncuts * 2));
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) % (input.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for c in cuts {
        chunks.push(&input[at..c]);
        at = c;
    }
    chunks.push(&input[at..]);

    let whole = decode([input], max, false);
    let split = decode(chunks.iter().copied(), max, true);
    assert_eq!(
        whole, split,
        "chunked feed decoded differently (cuts {chunks:?})"
    );

    if !whole.iter().any(|o| matches!(o, Out::TooLarge(_))) {
        let mut raw = Vec::with_capacity(input.len());
        for o in &whole {
            if let Out::Frame(ev) | Out::Incomplete(ev) = o {
                raw.extend_from_slice(ev.raw());
            }
        }
        assert_eq!(raw, input, "frames do not reproduce the input bytes");
    }

    for family in Family::ALL {
        let mut tally = StreamTally::new(family);
        for o in &whole {
            if let Out::Frame(ev) | Out::Incomplete(ev) = o {
                tally.observe(ev);
            }
        }
        let _ = (tally.usage(), tally.ended(), tally.fault(), tally.choices());
    }
}
