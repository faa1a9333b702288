//! Single flight: concurrent identical misses share one upstream call. The
//! first request (the leader) goes upstream and tees its response, frame by
//! frame, into a [`Flight`]; the others (followers) wait a bounded time for
//! its response head, then stream the same frames as they arrive.
//!
//! The flight's frames are also the capture buffer the entry is built from
//! when the response ends, so a response is held once, as `Bytes` clones of
//! the frames the leader's client received.

use super::key::Key;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The response head followers copy.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: HeaderMap,
}

/// How a flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The upstream body ended normally.
    Complete,
    /// It broke off (upstream error, or the leader's client went away).
    Failed,
}

#[derive(Default)]
struct State {
    head: Option<Head>,
    /// Frames so far, as the leader's client received them.
    frames: Vec<Bytes>,
    bytes: usize,
    end: Option<End>,
    /// New requests may still follow.
    joinable: bool,
    /// The leader will not serve followers (its response is not
    /// cacheable): followers go upstream themselves.
    abandoned: bool,
    /// Too big to store; frames are kept only while followers need them.
    overflow: bool,
    /// Followers waiting for the head or reading the frames (each
    /// [`Follower`] counts itself out when dropped).
    followers: usize,
    wakers: Vec<Waker>,
}

/// One upstream response shared by its leader and followers.
pub struct Flight {
    state: Mutex<State>,
    max_bytes: usize,
}

impl Flight {
    /// A flight whose frames are kept for storing up to `max_bytes`.
    pub fn new(max_bytes: usize) -> Arc<Flight> {
        Arc::new(Flight {
            state: Mutex::new(State {
                joinable: true,
                ..State::default()
            }),
            max_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(state: &mut State) {
        for w in state.wakers.drain(..) {
            w.wake();
        }
    }

    /// The leader's response head is cacheable: followers may use it.
    pub fn set_head(&self, head: Head) {
        let mut s = self.lock();
        s.head = Some(head);
        Self::wake(&mut s);
    }

    /// The leader's response will not be shared: waiting followers go
    /// upstream themselves, and nobody new joins.
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.abandoned = true;
        s.joinable = false;
        s.frames = Vec::new();
        Self::wake(&mut s);
    }

    /// One more frame from the leader's response.
    pub fn push(&self, frame: &Bytes) {
        let mut s = self.lock();
        if s.abandoned || (s.overflow && s.followers == 0) {
            return;
        }
        s.bytes += frame.len();
        if s.bytes > self.max_bytes && !s.overflow {
            // Too big to store: nobody new joins (they would need every
            // frame kept from the start), and without followers the frames
            // are released now.
            s.overflow = true;
            s.joinable = false;
            if s.followers == 0 {
                s.frames = Vec::new();
                return;
            }
        }
        s.frames.push(frame.clone());
        Self::wake(&mut s);
    }

    /// The leader's response ended. Returns the frames when it completed
    /// and they can be stored.
    pub fn finish(&self, end: End) -> Option<(Head, Vec<Bytes>)> {
        let mut s = self.lock();
        s.end = Some(end);
        s.joinable = false;
        Self::wake(&mut s);
        if end != End::Complete || s.overflow || s.abandoned {
            return None;
        }
        let head = s.head.clone()?;
        Some((head, s.frames.clone()))
    }

    /// Waits up to `wait` for the leader's head; `None` when the leader
    /// will not share (or failed first, or took too long).
    pub async fn head(&self, wait: Duration) -> Option<Head> {
        let poll = std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if s.abandoned || (s.head.is_none() && s.end.is_some()) {
                return Poll::Ready(None);
            }
            if let Some(h) = &s.head {
                return Poll::Ready(Some(h.clone()));
            }
            s.wakers.push(cx.waker().clone());
            Poll::Pending
        });
        tokio::time::timeout(wait, poll).await.ok().flatten()
    }

    /// True once the flight accepts no new followers.
    pub fn closed(&self) -> bool {
        !self.lock().joinable
    }

    /// A follower gave up (timed out, or its client went away).
    fn leave(&self) {
        let mut s = self.lock();
        s.followers = s.followers.saturating_sub(1);
        if s.overflow && s.followers == 0 {
            // Too big to store, and nobody left to read them.
            s.frames = Vec::new();
        }
    }
}

/// The flights in progress, by key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// The caller's role in a flight.
pub enum Join {
    /// Go upstream and tee the response into this flight.
    Leader(Leader),
    /// Someone is already fetching this: wait for their response.
    Follower(Follower),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the flight for `key`, or starts one.
    pub fn join(self: &Arc<Self>, key: Key, max_bytes: usize) -> Join {
        let mut map = self.lock();
        if let Some(f) = map.get(&key) {
            let mut s = f.lock();
            if s.joinable {
                s.followers += 1;
                drop(s);
                return Join::Follower(Follower { flight: f.clone() });
            }
        }
        let flight = Flight::new(max_bytes);
        map.insert(key, flight.clone());
        Join::Leader(Leader {
            flights: Some(self.clone()),
            key,
            flight,
        })
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: &Key, flight: &Arc<Flight>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// The leader's hold on its flight: leaving the map when dropped, so a
/// leader that fails (or whose client goes away) never strands followers.
pub struct Leader {
    flights: Option<Arc<Flights>>,
    key: Key,
    pub flight: Arc<Flight>,
}

impl Leader {
    /// A flight nobody can follow (the request skipped the lookup but its
    /// response is still stored).
    pub fn solo(key: Key, max_bytes: usize) -> Leader {
        Leader {
            flights: None,
            key,
            flight: Flight::new(max_bytes),
        }
    }

    pub fn key(&self) -> Key {
        self.key
    }

    /// Leaves the flight map now (the entry is in the store, or will not be).
    pub fn release(&mut self) {
        if let Some(flights) = self.flights.take() {
            flights.remove(&self.key, &self.flight);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let ended = self.flight.lock().end.is_some();
        if !ended {
            self.flight.finish(End::Failed);
        }
        self.release();
    }
}

/// A follower's hold on its flight, counted among the followers until it
/// is dropped: an oversized response keeps its frames only while one
/// remains.
pub struct Follower {
    flight: Arc<Flight>,
}

impl Follower {
    /// See [`Flight::head`].
    pub async fn head(&self, wait: Duration) -> Option<Head> {
        self.flight.head(wait).await
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.flight.leave();
    }
}

/// A follower's response body: the flight's frames, from the first, as
/// they arrive.
pub struct FollowerBody {
    follower: Follower,
    next: usize,
}

impl FollowerBody {
    pub fn new(follower: Follower) -> Self {
        FollowerBody { follower, next: 0 }
    }
}

/// The leader's response broke off, so this copy of it does too.
#[derive(Debug, thiserror::Error)]
#[error("the shared upstream response broke off")]
pub struct FlightBroke;

impl HttpBody for FollowerBody {
    type Data = Bytes;
    type Error = FlightBroke;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FlightBroke>>> {
        let next = self.next;
        let mut s = self.follower.flight.lock();
        if let Some(frame) = s.frames.get(next).cloned() {
            drop(s);
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        match s.end {
            Some(End::Complete) if !s.abandoned => Poll::Ready(None),
            Some(_) => Poll::Ready(Some(Err(FlightBroke))),
            None if s.abandoned => Poll::Ready(Some(Err(FlightBroke))),
            None => {
                if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    s.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn head() -> Head {
        Head {
            status: 200,
            headers: HeaderMap::new(),
        }
    }

    #[tokio::test]
    async fn followers_stream_the_leaders_frames_as_they_arrive() {
        let flights = Arc::new(Flights::default());
        let key = Key([7; 32]);
        let Join::Leader(leader) = flights.join(key, 1 << 20) else {
            panic!("first is the leader")
        };
        let Join::Follower(f) = flights.join(key, 1 << 20) else {
            panic!("second follows")
        };
        leader.flight.set_head(head());
        assert_eq!(f.head(Duration::from_secs(1)).await.unwrap().status, 200);
        let mut body = FollowerBody::new(f);
        leader.flight.push(&Bytes::from_static(b"a"));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "a");
        leader.flight.push(&Bytes::from_static(b"b"));
        let stored = leader.flight.finish(End::Complete).unwrap();
        assert_eq!(stored.1, vec![Bytes::from("a"), Bytes::from("b")]);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "b");
        drop(leader);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_leader_that_goes_away_breaks_its_followers() {
        let flights = Arc::new(Flights::default());
        let key = Key([8; 32]);
        let Join::Leader(leader) = flights.join(key, 1 << 20) else {
            panic!()
        };
        let Join::Follower(f) = flights.join(key, 1 << 20) else {
            panic!()
        };
        leader.flight.set_head(head());
        leader.flight.push(&Bytes::from_static(b"a"));
        drop(leader);
        assert!(flights.is_empty(), "a dropped leader leaves the map");
        let mut body = FollowerBody::new(f);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_abandoned_or_slow_flight_sends_followers_upstream() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(leader) = flights.join(Key([9; 32]), 1 << 20) else {
            panic!()
        };
        let Join::Follower(f) = flights.join(Key([9; 32]), 1 << 20) else {
            panic!()
        };
        leader.flight.abandon();
        assert!(f.head(Duration::from_secs(5)).await.is_none());
        let Join::Leader(_slow) = flights.join(Key([10; 32]), 1 << 20) else {
            panic!()
        };
        let Join::Follower(f) = flights.join(Key([10; 32]), 1 << 20) else {
            panic!()
        };
        tokio::time::pause();
        assert!(f.head(Duration::from_millis(50)).await.is_none());
    }

    #[tokio::test]
    async fn an_oversized_response_stops_keeping_frames_once_its_followers_leave() {
        let flights = Arc::new(Flights::default());
        let key = Key([11; 32]);
        let Join::Leader(leader) = flights.join(key, 4) else {
            panic!()
        };
        let Join::Follower(gives_up) = flights.join(key, 4) else {
            panic!()
        };
        let Join::Follower(reads) = flights.join(key, 4) else {
            panic!()
        };
        // One follower times out waiting for the head.
        tokio::time::pause();
        assert!(gives_up.head(Duration::from_millis(50)).await.is_none());
        drop(gives_up);
        leader.flight.set_head(head());
        let mut body = FollowerBody::new(reads);
        leader.flight.push(&Bytes::from_static(b"abc"));
        leader.flight.push(&Bytes::from_static(b"def"));
        assert!(leader.flight.closed(), "over the limit");
        assert_eq!(leader.flight.lock().frames.len(), 2, "kept for the reader");
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abc"
        );
        // The reader's client goes away mid-stream.
        drop(body);
        assert_eq!(leader.flight.lock().followers, 0);
        assert!(leader.flight.lock().frames.is_empty(), "released at once");
        leader.flight.push(&Bytes::from_static(b"ghi"));
        assert!(leader.flight.lock().frames.is_empty(), "nothing kept since");
    }

    #[test]
    fn an_oversized_response_is_not_kept_without_followers() {
        let flight = Flight::new(4);
        flight.set_head(head());
        flight.push(&Bytes::from_static(b"abc"));
        flight.push(&Bytes::from_static(b"def"));
        assert!(flight.closed());
        assert!(flight.finish(End::Complete).is_none());
    }
}
