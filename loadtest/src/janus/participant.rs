//! One simulated participant against Janus' VideoRoom, start to finish. It plays the same part
//! as a Ting participant (same plan, same synthetic media, same measurements) the way Janus
//! clients do it: one session; a publisher handle that joins the room with the participant's
//! index as its feed id and, if it publishes, offers its microphone and simulcast camera; a
//! subscriber handle whose single peer connection receives every other feed (Janus offers,
//! the tester answers; new publishers are added with `subscribe`, one renegotiation at a time).
//! Janus forwards every microphone (no loudest-N) and every simulcast layer reaches it (no
//! paused layers): that is its behaviour, and the comparison keeps it.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use str0m::Event;
use str0m::format::Codec;
use ting_protocol::TrackKind;

use super::api::{self, JanusMessage, Jsep, Publisher, ROOM_EXISTS};
use super::client::JanusClient;
use super::room_id;
use crate::media::{MediaSource, Probe, VIDEO_LAYERS};
use crate::participant::{Outcome, Shared, fail, ms, recv_kbps, source_results};
use crate::peer::{Counters, MediaPeer};
use crate::progress::Progress;
use crate::report::ParticipantResult;
use crate::scenario::{MAX_PARTICIPANTS, ParticipantPlan};
use crate::stats::{Histogram, ReceiverStats};

/// Janus ends sessions that stay silent for 60 s (its default `session_timeout`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// How long to wait for Janus to confirm the session's end.
const BYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Server errors kept per participant for the report.
const KEEP_ERRORS: usize = 5;

/// The feed id of a participant: unique in the run, and the sender id in its probes.
pub fn feed_id(plan: &ParticipantPlan) -> u64 {
    plan.index as u64 + 1
}

/// Runs one participant from its start time to its departure. Never panics on network or
/// server trouble: failures end up in `result.error`.
pub async fn run(plan: ParticipantPlan, shared: Arc<Shared>) -> Outcome {
    let start = shared.clock.base() + plan.start_offset;
    tokio::time::sleep_until(start.into()).await;
    Progress::inc(&shared.progress.started);
    let mut outcome = Outcome {
        result: ParticipantResult::planned(&plan),
        ..Default::default()
    };
    if Instant::now() >= shared.leave_at {
        let error = "started after the end of the run (tester too slow)".to_owned();
        return fail(outcome, &shared, error);
    }
    let t0 = Instant::now();
    let join_deadline = (t0 + shared.join_timeout).min(shared.hard_stop);
    let joined = tokio::time::timeout_at(join_deadline.into(), join(&shared, &plan)).await;
    let joined = match joined {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return fail(outcome, &shared, format!("{e:#}")),
        Err(_) => {
            let limit = shared.join_timeout.as_secs_f64();
            return fail(outcome, &shared, format!("no `joined` within {limit:.0} s"));
        }
    };
    outcome.result.join_ms = Some(ms(t0.elapsed()));
    outcome.result.participant_id = Some(feed_id(&plan));
    Progress::inc(&shared.progress.joined);

    let mut session = match Session::new(plan, shared.clone(), joined, t0) {
        Ok(s) => s,
        Err(e) => return fail(outcome, &shared, format!("{e:#}")),
    };
    let ran = tokio::time::timeout_at(shared.hard_stop.into(), session.run()).await;
    let error = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some("still running at the run's hard stop".to_owned()),
    };
    if error.is_some() {
        Progress::inc(&shared.progress.failed);
    }
    session.finish(&mut outcome);
    outcome.result.error = error;
    Progress::inc(&shared.progress.finished);
    outcome
}

/// What joining produced.
struct Joined {
    client: JanusClient,
    session: u64,
    room: u64,
    publisher_handle: u64,
    subscriber_handle: Option<u64>,
    private_id: Option<u64>,
    publishers: Vec<Publisher>,
}

/// Session, handles, the room (created by whoever comes first), and the publisher `join`.
async fn join(shared: &Shared, plan: &ParticipantPlan) -> anyhow::Result<Joined> {
    let mut client = JanusClient::connect(&shared.server.ws).await?;
    let t = client.transaction();
    let reply = client.call(&t, &api::create_session(&t)).await?;
    let session = created_id(&reply).context("creating a Janus session")?;
    let t = client.transaction();
    let reply = client.call(&t, &api::attach(session, &t)).await?;
    let publisher_handle = created_id(&reply).context("attaching the publisher handle")?;
    let subscriber_handle = if plan.receive {
        let t = client.transaction();
        let reply = client.call(&t, &api::attach(session, &t)).await?;
        Some(created_id(&reply).context("attaching the subscriber handle")?)
    } else {
        None
    };

    let room = room_id(plan.room.as_str());
    let t = client.transaction();
    let body = api::create_room(room, MAX_PARTICIPANTS);
    let reply = client
        .call(&t, &api::message(session, publisher_handle, &t, body, None))
        .await?;
    if let Some(error) = reply.error_text()
        && reply.videoroom_error() != Some(ROOM_EXISTS)
    {
        bail!("creating room {room}: {error}");
    }

    let t = client.transaction();
    let body = api::join_publisher(room, feed_id(plan), &plan.identity);
    let reply = client
        .call(&t, &api::message(session, publisher_handle, &t, body, None))
        .await?;
    if let Some(error) = reply.error_text() {
        bail!("join refused: {error}");
    }
    let data = reply.videoroom().cloned().unwrap_or_default();
    if data.videoroom.as_deref() != Some("joined") {
        bail!("unexpected reply to join: {:?}", data.videoroom);
    }
    Ok(Joined {
        client,
        session,
        room,
        publisher_handle,
        subscriber_handle,
        private_id: data.private_id,
        publishers: data.publishers.unwrap_or_default(),
    })
}

fn created_id(reply: &JanusMessage) -> anyhow::Result<u64> {
    if let Some(error) = reply.error_text() {
        bail!("{error}");
    }
    reply
        .data
        .as_ref()
        .map(|d| d.id)
        .context("reply without an id")
}

/// Which of the two peer connections something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Publisher,
    Subscriber,
}

struct Session {
    plan: ParticipantPlan,
    shared: Arc<Shared>,
    t0: Instant,
    me: u64,
    client: JanusClient,
    session: u64,
    room: u64,
    publisher_handle: u64,
    subscriber_handle: Option<u64>,
    private_id: Option<u64>,
    /// Where Janus' media candidates must be (see [`media_ip`]).
    media_ip: Option<IpAddr>,
    /// Sends the microphone and camera (publishers only).
    publisher: Option<MediaPeer>,
    /// Receives every subscribed feed (created with Janus' first offer).
    subscriber: Option<MediaPeer>,
    source: Option<MediaSource>,
    substream: u8,
    /// Feeds that publish something, with (audio, video).
    feeds: HashMap<u64, (bool, bool)>,
    /// Feeds asked for in `join`/`subscribe`, and those still to ask for.
    requested: BTreeSet<u64>,
    /// A subscription request whose offer has not been answered yet.
    subscribing: bool,
    /// The subscription's m-lines: mid → (feed, kind).
    mids: HashMap<String, (u64, TrackKind)>,
    stats: ReceiverStats,
    events: Vec<Event>,
    frames: Vec<crate::media::OutFrame>,
    publisher_timeout: Instant,
    subscriber_timeout: Instant,
    next_keepalive: Instant,
    /// When each (sender, kind) was first asked for, run-clock microseconds.
    subscribed_at: HashMap<(u64, TrackKind), u64>,
    connected_at: Option<Instant>,
    server_errors: Vec<String>,
    server_error_count: u64,
    offers: u32,
    reported: Counters,
    receiving: bool,
    ended_us: Option<u64>,
}

impl Session {
    fn new(
        plan: ParticipantPlan,
        shared: Arc<Shared>,
        joined: Joined,
        t0: Instant,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let publisher = if plan.publishes() {
            let peer = MediaPeer::bind(shared.local_ip, now)?;
            note_port(&shared, &peer);
            Some(peer)
        } else {
            None
        };
        let heights: Vec<u16> = VIDEO_LAYERS.iter().map(|l| l.height).collect();
        let shared_leave_at = shared.leave_at;
        let media_ip = media_ip(&shared);
        let mut session = Self {
            substream: api::substream_for(plan.max_height, &heights),
            me: feed_id(&plan),
            plan,
            shared,
            t0,
            client: joined.client,
            session: joined.session,
            room: joined.room,
            publisher_handle: joined.publisher_handle,
            subscriber_handle: joined.subscriber_handle,
            private_id: joined.private_id,
            media_ip,
            publisher,
            subscriber: None,
            source: None,
            feeds: HashMap::new(),
            requested: BTreeSet::new(),
            subscribing: false,
            mids: HashMap::new(),
            stats: ReceiverStats::default(),
            events: Vec::new(),
            frames: Vec::new(),
            // Without a peer nothing is due on its side before the leave.
            publisher_timeout: shared_leave_at,
            subscriber_timeout: shared_leave_at,
            next_keepalive: now + KEEPALIVE_INTERVAL,
            subscribed_at: HashMap::new(),
            connected_at: None,
            server_errors: Vec::new(),
            server_error_count: 0,
            offers: 0,
            reported: Counters::default(),
            receiving: false,
            ended_us: None,
        };
        session.add_publishers(&joined.publishers);
        Ok(session)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let result = self.main_loop().await;
        self.ended_us = Some(
            self.shared
                .clock
                .us(Instant::now().min(self.shared.leave_at)),
        );
        // Leave even after a failure, so that Janus frees the feed at once.
        let left = self.leave().await;
        result.and(left)
    }

    async fn main_loop(&mut self) -> anyhow::Result<()> {
        self.publish().await?;
        self.subscribe_new().await?;
        let sleep = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            if now >= self.shared.leave_at {
                return Ok(());
            }
            let mut deadline = self
                .publisher_timeout
                .min(self.subscriber_timeout)
                .min(self.shared.leave_at)
                .min(self.next_keepalive);
            if let Some(due) = self.source.as_ref().and_then(MediaSource::next_due) {
                deadline = deadline.min(due);
            }
            sleep.as_mut().reset(deadline.into());
            tokio::select! {
                received = recv_on(self.publisher.as_mut()) => {
                    let (len, from) = received.context("UDP receive")?;
                    if let Some(peer) = &mut self.publisher {
                        peer.receive(len, from, Instant::now())?;
                    }
                }
                received = recv_on(self.subscriber.as_mut()) => {
                    let (len, from) = received.context("UDP receive")?;
                    if let Some(peer) = &mut self.subscriber {
                        peer.receive(len, from, Instant::now())?;
                    }
                }
                message = self.client.recv() => {
                    let message = message?;
                    self.on_janus(message).await?;
                }
                () = &mut sleep => self.on_timer(Instant::now()).await?,
            }
            self.flush()?;
        }
    }

    /// Offers the microphone and camera on the publisher handle (`configure` + offer).
    async fn publish(&mut self) -> anyhow::Result<()> {
        let Some(peer) = &mut self.publisher else {
            return Ok(());
        };
        let Some(offer) = peer.create_offer(self.plan.audio, self.plan.video, &[])? else {
            return Ok(());
        };
        self.offers += 1;
        let (body, jsep) = api::publish(&offer.sdp);
        let t = self.client.transaction();
        let message = api::message(self.session, self.publisher_handle, &t, body, Some(jsep));
        self.client.send(&message).await
    }

    async fn on_timer(&mut self, now: Instant) -> anyhow::Result<()> {
        for peer in [&mut self.publisher, &mut self.subscriber]
            .into_iter()
            .flatten()
        {
            peer.timeout(now)?;
        }
        if let Some(source) = &mut self.source {
            let talking = self.plan.talk.talking(self.shared.clock.elapsed(now));
            source.poll(now, self.shared.clock.us(now), talking, &mut self.frames);
            if let Some(peer) = &mut self.publisher {
                for frame in self.frames.drain(..) {
                    peer.write(frame, now, &self.shared.clock)?;
                }
            }
            self.frames.clear();
        }
        if now >= self.next_keepalive {
            self.next_keepalive = now + KEEPALIVE_INTERVAL;
            let t = self.client.transaction();
            self.client.send(&api::keepalive(self.session, &t)).await?;
        }
        Ok(())
    }

    /// Sends what str0m wants sent on both connections and handles their events.
    fn flush(&mut self) -> anyhow::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        for side in [Side::Publisher, Side::Subscriber] {
            let peer = match side {
                Side::Publisher => self.publisher.as_mut(),
                Side::Subscriber => self.subscriber.as_mut(),
            };
            let Some(peer) = peer else {
                continue;
            };
            let timeout = peer.drain(&mut events)?;
            match side {
                Side::Publisher => self.publisher_timeout = timeout,
                Side::Subscriber => self.subscriber_timeout = timeout,
            }
            for event in events.drain(..) {
                self.on_event(side, event);
            }
        }
        self.events = events;
        let c = self.counters();
        let p = &self.shared.progress;
        Progress::add(&p.rx_packets, c.rx_packets - self.reported.rx_packets);
        Progress::add(
            &p.rx_media_packets,
            c.rx_media_packets - self.reported.rx_media_packets,
        );
        Progress::add(&p.rx_bytes, c.rx_bytes - self.reported.rx_bytes);
        Progress::add(&p.tx_packets, c.tx_packets - self.reported.tx_packets);
        Progress::add(&p.tx_bytes, c.tx_bytes - self.reported.tx_bytes);
        self.reported = c;
        Ok(())
    }

    /// Both connections' traffic.
    fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for peer in [&self.publisher, &self.subscriber].into_iter().flatten() {
            let c = peer.counters;
            sum.rx_packets += c.rx_packets;
            sum.rx_media_packets += c.rx_media_packets;
            sum.rx_bytes += c.rx_bytes;
            sum.tx_packets += c.tx_packets;
            sum.tx_bytes += c.tx_bytes;
            sum.tx_dropped += c.tx_dropped;
        }
        sum
    }

    fn on_event(&mut self, side: Side, event: Event) {
        match event {
            Event::Connected => {
                let now = Instant::now();
                if self.connected_at.is_none() {
                    self.connected_at = Some(now);
                    Progress::inc(&self.shared.progress.connected);
                }
                if side == Side::Publisher {
                    self.source = Some(MediaSource::new(
                        self.me,
                        self.plan.audio,
                        self.plan.video,
                        now,
                        self.shared.keyframe_interval,
                    ));
                }
            }
            Event::MediaData(data) if side == Side::Subscriber => {
                let video = data.params.spec().codec == Codec::Vp8;
                let Some(probe) = Probe::find(&data.data, video) else {
                    self.stats.unreadable += 1;
                    return;
                };
                let expected = self.mids.get(&*data.mid).map(|(feed, _)| *feed);
                if expected != Some(probe.sender) {
                    self.stats.misrouted += 1;
                }
                let at = self.shared.clock.us(data.network_time);
                self.stats
                    .frame(&probe, at, data.data.len(), data.is_keyframe(), false);
                if !self.receiving {
                    self.receiving = true;
                    Progress::inc(&self.shared.progress.receiving);
                }
            }
            Event::KeyframeRequest(request) => {
                if let Some(source) = &mut self.source {
                    source.request_keyframe(request.rid.as_deref());
                }
            }
            _ => {}
        }
    }

    async fn on_janus(&mut self, message: JanusMessage) -> anyhow::Result<()> {
        match message.janus.as_str() {
            "event" => {}
            "timeout" => bail!("Janus timed the session out"),
            "hangup" => {
                let reason = message.reason.as_deref().unwrap_or("");
                self.note_error(format!("hangup: {reason}"));
                return Ok(());
            }
            "error" => {
                if let Some(error) = message.error_text() {
                    self.note_error(error);
                }
                return Ok(());
            }
            // webrtcup, media, slowlink, detached, success of keepalive …
            _ => return Ok(()),
        }
        let from_subscriber = message.sender.is_some() && message.sender == self.subscriber_handle;
        if let Some(error) = message.error_text() {
            if from_subscriber {
                // The subscription request failed: let the next one through.
                self.subscribing = false;
            }
            self.note_error(error);
            return Ok(());
        }
        let data = message.videoroom().cloned().unwrap_or_default();
        if from_subscriber {
            if let Some(streams) = &data.streams {
                self.mids = streams
                    .iter()
                    .filter(|s| s.active)
                    .filter_map(|s| {
                        let kind = match s.kind.as_str() {
                            "audio" => TrackKind::Audio,
                            "video" => TrackKind::Video,
                            _ => return None,
                        };
                        Some((s.mid.clone(), (s.feed_id?, kind)))
                    })
                    .collect();
            }
            match &message.jsep {
                Some(jsep) if jsep.kind == "offer" => self.answer(jsep).await?,
                _ => {
                    if data.videoroom.as_deref() == Some("updated") {
                        // Nothing to renegotiate.
                        self.subscribing = false;
                    }
                }
            }
            return self.subscribe_new().await;
        }
        // The publisher handle: our answer, and the room's publishers coming and going.
        if let Some(jsep) = &message.jsep
            && jsep.kind == "answer"
            && let Some(peer) = &mut self.publisher
        {
            peer.accept_answer(&jsep.sdp, self.media_ip)?;
        }
        if let Some(publishers) = &data.publishers {
            self.add_publishers(publishers);
        }
        if let Some(gone) = data.gone() {
            // Janus renegotiates the subscription itself (autoupdate).
            self.feeds.remove(&gone);
        }
        self.subscribe_new().await
    }

    fn note_error(&mut self, error: String) {
        self.server_error_count += 1;
        if self.server_errors.len() < KEEP_ERRORS {
            self.server_errors.push(error);
        }
    }

    fn add_publishers(&mut self, publishers: &[Publisher]) {
        for p in publishers {
            let (audio, video) = p.media();
            if p.id != self.me && (audio || video) {
                self.feeds.insert(p.id, (audio, video));
            }
        }
    }

    /// Janus offered the subscription (first or renegotiated): answer with `start`.
    async fn answer(&mut self, offer: &Jsep) -> anyhow::Result<()> {
        if self.subscriber.is_none() {
            let peer = MediaPeer::bind(self.shared.local_ip, Instant::now())?;
            note_port(&self.shared, &peer);
            self.subscriber = Some(peer);
        }
        let (Some(peer), Some(handle)) = (&mut self.subscriber, self.subscriber_handle) else {
            return Ok(());
        };
        let answer = peer.accept_offer(&offer.sdp, self.media_ip)?;
        let (body, jsep) = api::start(&answer);
        let t = self.client.transaction();
        let message = api::message(self.session, handle, &t, body, Some(jsep));
        self.client.send(&message).await?;
        self.subscribing = false;
        Ok(())
    }

    /// Subscribes to the feeds not asked for yet, one request (and renegotiation) at a time.
    async fn subscribe_new(&mut self) -> anyhow::Result<()> {
        let Some(handle) = self.subscriber_handle else {
            return Ok(());
        };
        if self.subscribing {
            return Ok(());
        }
        let mut new: Vec<u64> = self
            .feeds
            .keys()
            .filter(|f| !self.requested.contains(f))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        let body = if self.requested.is_empty() {
            api::join_subscriber(self.room, self.private_id, &new, self.substream)
        } else {
            api::subscribe(&new, self.substream)
        };
        let now_us = self.shared.clock.us(Instant::now());
        for feed in &new {
            self.requested.insert(*feed);
            let (audio, video) = self.feeds.get(feed).copied().unwrap_or_default();
            for (has, kind) in [(audio, TrackKind::Audio), (video, TrackKind::Video)] {
                if has {
                    self.subscribed_at.entry((*feed, kind)).or_insert(now_us);
                }
            }
        }
        self.subscribing = true;
        let t = self.client.transaction();
        self.client
            .send(&api::message(self.session, handle, &t, body, None))
            .await
    }

    /// Ends the session (both handles hang up), waits for Janus to confirm, closes the peers.
    async fn leave(&mut self) -> anyhow::Result<()> {
        let t = self.client.transaction();
        if self
            .client
            .send(&api::destroy(self.session, &t))
            .await
            .is_ok()
        {
            let deadline = Instant::now() + BYE_TIMEOUT;
            while let Ok(Ok(m)) = tokio::time::timeout_at(deadline.into(), self.client.recv()).await
            {
                if m.transaction.as_deref() == Some(t.as_str()) {
                    break;
                }
            }
        }
        self.client.close().await;
        for peer in [&mut self.publisher, &mut self.subscriber]
            .into_iter()
            .flatten()
        {
            peer.close();
        }
        Ok(())
    }

    /// Fills in the result, like the Ting participant does.
    fn finish(&mut self, outcome: &mut Outcome) {
        let end_us = self.ended_us.unwrap_or_else(|| {
            self.shared
                .clock
                .us(Instant::now().min(self.shared.leave_at))
        });
        let mut subscribed: HashMap<u64, (bool, bool)> = HashMap::new();
        for (feed, kind) in self.mids.values() {
            let entry = subscribed.entry(*feed).or_default();
            match kind {
                TrackKind::Audio => entry.0 = true,
                TrackKind::Video => entry.1 = true,
            }
        }
        self.stats.finish(
            end_us,
            subscribed
                .iter()
                .filter(|(_, (_, video))| *video)
                .map(|(sender, _)| *sender),
        );
        let r = &mut outcome.result;
        r.sources = source_results(&self.stats, &subscribed, &self.subscribed_at);
        r.connect_ms = self.connected_at.map(|c| ms(c.duration_since(self.t0)));
        r.first_media_ms = self
            .stats
            .first_media_us
            .map(|us| (us.saturating_sub(self.shared.clock.us(self.t0))) as f64 / 1000.0);
        let c = self.counters();
        let measured_from = self
            .connected_at
            .map(|c| self.shared.clock.us(c))
            .unwrap_or(end_us);
        r.recv_kbps = recv_kbps(c.rx_bytes, measured_from, end_us);
        r.rx_packets = c.rx_packets;
        r.tx_packets = c.tx_packets;
        r.tx_dropped = c.tx_dropped;
        r.media_bytes = self.stats.media_bytes;
        r.offers = self.offers;
        r.server_errors = std::mem::take(&mut self.server_errors);
        r.server_error_count = self.server_error_count;
        r.misrouted = self.stats.misrouted;
        r.unreadable = self.stats.unreadable;
        if let Some(source) = &self.source {
            r.keyframe_requests = source.keyframe_requests;
            r.late_frames = source.late_skips;
        }
        outcome.audio_latency = std::mem::take(&mut self.stats.audio_latency);
        outcome.video_latency = std::mem::take(&mut self.stats.video_latency);
        outcome.ws_rtt = Histogram::default();
    }
}

/// The address Janus' media candidates must be on: the server's, or with Janus' API on loopback
/// (same machine) the tester's own — libnice gathers no loopback candidates, so Janus and the
/// tester meet on a real interface.
fn media_ip(shared: &Shared) -> Option<IpAddr> {
    match shared.server.ip {
        Some(ip) if !ip.is_loopback() => Some(ip),
        _ if !shared.local_ip.is_unspecified() => Some(shared.local_ip),
        _ => None,
    }
}

fn note_port(shared: &Shared, peer: &MediaPeer) {
    if let Ok(mut ports) = shared.ports.lock() {
        ports.insert(peer.local_addr().port());
    }
}

/// A peer's next datagram, or never when there is no such peer (for `select!`).
async fn recv_on(peer: Option<&mut MediaPeer>) -> io::Result<(usize, SocketAddr)> {
    match peer {
        Some(peer) => peer.recv().await,
        None => std::future::pending().await,
    }
}
