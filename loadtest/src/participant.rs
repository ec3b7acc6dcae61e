//! One simulated participant, start to finish: joins through the signalling WebSocket like the
//! web client, negotiates its media (the client always offers, one offer in flight), subscribes
//! to everything the others publish, sends synthetic media, measures what arrives, and leaves.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use str0m::Event;
use str0m::format::Codec;
use ting_protocol::{
    ClientMessage, PROTOCOL_VERSION, ParticipantId, ParticipantInfo, Subscription, TrackId,
    TrackKind, TrackSource,
};

use crate::media::{MediaSource, OutFrame, Probe, RunClock};
use crate::peer::{Counters, MediaPeer};
use crate::progress::Progress;
use crate::report::{ParticipantResult, SourceResult};
use crate::roster::Roster;
use crate::scenario::ParticipantPlan;
use crate::signal::{Incoming, ServerEvent, ServerUrl, SignalClient};
use crate::stats::{Histogram, ReceiverStats};

/// Like the web client: wait a moment so that a burst of new tracks needs one offer, not many.
const NEGOTIATION_DELAY: Duration = Duration::from_millis(30);
/// The web client pings every 10 s.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for `bye` after `leave`.
const BYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Server errors kept per participant for the report.
const KEEP_ERRORS: usize = 5;
/// Frames from another sender right after an m-line was given another track are in flight,
/// not misrouted.
const SWITCH_GRACE: Duration = Duration::from_secs(1);
/// Roster page size asked for when `joined` listed only the first page.
const ROSTER_PAGE: u32 = 100;
/// Error codes that answer an offer (the offer failed).
const OFFER_ERRORS: [&str; 5] = [
    "invalid_sdp",
    "not_allowed",
    "unavailable",
    "internal",
    "message_too_large",
];

/// What all participants of a run share.
#[derive(Debug)]
pub struct Shared {
    pub clock: RunClock,
    pub server: ServerUrl,
    /// WebSocket URLs of other nodes to rejoin through when `server` is gone too.
    pub fallbacks: Vec<String>,
    pub local_ip: IpAddr,
    /// When everybody leaves; measurements end here.
    pub leave_at: Instant,
    /// No participant task runs past this.
    pub hard_stop: Instant,
    pub join_timeout: Duration,
    pub keyframe_interval: Duration,
    pub progress: Arc<Progress>,
    /// Local ports of the participants' media sockets (for the kernel's drop counters).
    pub ports: Mutex<HashSet<u16>>,
}

/// A participant's result plus the distributions that are only reported merged.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub result: ParticipantResult,
    pub audio_latency: Histogram,
    pub video_latency: Histogram,
    pub ws_rtt: Histogram,
}

/// Runs one participant from its start time to its departure. Never panics on network or
/// server trouble: failures end up in `result.error`.
pub async fn run(plan: ParticipantPlan, token: String, shared: Arc<Shared>) -> Outcome {
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
    let origin = shared.server.ws.clone();
    let joined =
        tokio::time::timeout_at(join_deadline.into(), join(&plan, token.clone(), &origin)).await;
    let (signal, me, others, count) = match joined {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return fail(outcome, &shared, format!("{e:#}")),
        Err(_) => {
            let limit = shared.join_timeout.as_secs_f64();
            return fail(outcome, &shared, format!("no `joined` within {limit:.0} s"));
        }
    };
    outcome.result.join_ms = Some(ms(t0.elapsed()));
    outcome.result.participant_id = Some(me.0);
    Progress::inc(&shared.progress.joined);

    let mut joined = (signal, me, others, count);
    let mut session_start = t0;
    let mut first_media = None;
    // When the previous session's media stopped, for the gap a rejoin caused.
    let mut media_stopped_us: Option<u64> = None;
    let error = loop {
        let (signal, me, others, count) = joined;
        let peer = match MediaPeer::bind(shared.local_ip, Instant::now()) {
            Ok(p) => p,
            Err(e) => break Some(format!("{e:#}")),
        };
        if let Ok(mut ports) = shared.ports.lock() {
            ports.insert(peer.local_addr().port());
        }
        let mut session = Session::new(
            plan.clone(),
            shared.clone(),
            signal,
            peer,
            me,
            &others,
            session_start,
        );
        // `joined` may list only the first page of the roster (publishers first).
        session
            .more_roster(&others, 0, count.saturating_sub(1))
            .await;
        let ran = tokio::time::timeout_at(shared.hard_stop.into(), session.run()).await;
        let error = match ran {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("still running at the run's hard stop".to_owned()),
        };
        let rejoin_to = session.rejoin_to.take();
        let (first_us, last_us) = (session.stats.first_media_us, session.stats.last_media_us);
        finish_keeping_distributions(&mut session, &mut outcome);
        if outcome.result.rejoins == 0 {
            first_media = outcome.result.first_media_ms;
        } else if let (Some(stopped), Some(again)) = (media_stopped_us, first_us) {
            // From the last frame before the trouble to the first one after the rejoin.
            outcome
                .result
                .recovery_ms
                .push(again.saturating_sub(stopped) as f64 / 1000.0);
        }
        media_stopped_us = last_us.or(media_stopped_us);
        // Moved by the server or cut off: join again (at the node named, or where we began)
        // while the run lasts, as a browser does.
        let Some(url) = rejoin_to else {
            break error;
        };
        if Instant::now() + REJOIN_MARGIN >= shared.leave_at {
            // Moved as the run ends: not a failure, there is just no time to come back.
            break None;
        }
        session_start = Instant::now();
        let deadline = (session_start + shared.join_timeout).min(shared.hard_stop);
        let again = async {
            let mut last = None;
            // The first try goes where we were sent; then where we began, then the other nodes.
            let mut targets: Vec<&str> = vec![url.as_str(), origin.as_str()];
            targets.extend(shared.fallbacks.iter().map(String::as_str));
            targets.dedup();
            for target in targets {
                match join(&plan, token.clone(), target).await {
                    Ok(j) => return Ok(j),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(REJOIN_BACKOFF).await;
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no node to rejoin")))
        };
        match tokio::time::timeout_at(deadline.into(), again).await {
            Ok(Ok(j)) => joined = j,
            Ok(Err(e)) => break Some(format!("rejoining: {e:#}")),
            Err(_) => break Some("rejoining: no `joined` in time".to_owned()),
        }
        outcome.result.rejoins += 1;
        outcome.result.participant_id = Some(joined.1.0);
    };
    outcome.result.first_media_ms = first_media;
    if error.is_some() {
        Progress::inc(&shared.progress.failed);
    }
    outcome.result.error = error;
    Progress::inc(&shared.progress.finished);
    outcome
}

/// A rejoin is not started this close to the end of the run.
const REJOIN_MARGIN: Duration = Duration::from_secs(1);
/// Pause between rejoin attempts.
const REJOIN_BACKOFF: Duration = Duration::from_millis(300);

/// Fills in the result from a session; latency and round-trip distributions add up over the
/// participant's sessions.
fn finish_keeping_distributions(session: &mut Session, outcome: &mut Outcome) {
    let audio = std::mem::take(&mut outcome.audio_latency);
    let video = std::mem::take(&mut outcome.video_latency);
    let rtt = std::mem::take(&mut outcome.ws_rtt);
    session.finish(outcome);
    outcome.audio_latency.merge(&audio);
    outcome.video_latency.merge(&video);
    outcome.ws_rtt.merge(&rtt);
}

pub(crate) fn fail(mut outcome: Outcome, shared: &Shared, error: String) -> Outcome {
    outcome.result.error = Some(error);
    Progress::inc(&shared.progress.failed);
    Progress::inc(&shared.progress.finished);
    outcome
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Connects and joins; returns the socket, the participant's id, the others in the room (or the
/// first page of them) and the headcount (0 if the server does not say).
async fn join(
    plan: &ParticipantPlan,
    token: String,
    start: &str,
) -> anyhow::Result<(SignalClient, ParticipantId, Vec<ParticipantInfo>, u32)> {
    let mut url = start.to_owned();
    // A cluster node may send us to the node that serves the room; more than a few hops is a
    // misconfigured cluster.
    for _ in 0..MAX_MOVES {
        let mut signal = SignalClient::connect(&url).await?;
        signal
            .send(&ClientMessage::Join {
                version: PROTOCOL_VERSION,
                token: token.clone(),
                room: Some(plan.room.clone()),
                resume: None,
            })
            .await?;
        let moved = loop {
            match signal.recv().await? {
                Incoming::Message(m) => match *m {
                    ServerEvent::Joined {
                        participant,
                        participants,
                        participant_count,
                    } => return Ok((signal, participant.id, participants, participant_count)),
                    ServerEvent::Moved { url } => break url,
                    ServerEvent::Error { code, message } => {
                        bail!("join refused: {code}: {message}")
                    }
                    ServerEvent::Bye { reason } => bail!("join ended by the server: {reason}"),
                    // `waiting` (lobby): `joined` follows once admitted, within the join timeout.
                    _ => continue,
                },
                Incoming::Unreadable(_) => continue,
                Incoming::Closed | Incoming::Failed(_) => {
                    bail!("the server closed the socket before `joined`")
                }
            }
        };
        url = moved;
    }
    bail!("moved more than {MAX_MOVES} times without joining")
}

/// How many `moved` answers a join follows.
const MAX_MOVES: usize = 3;

struct Session {
    plan: ParticipantPlan,
    shared: Arc<Shared>,
    /// When the participant started to connect.
    t0: Instant,
    me: ParticipantId,
    signal: SignalClient,
    peer: MediaPeer,
    source: Option<MediaSource>,
    /// Our camera's track id (from the answer) and the layers the server wants from it.
    camera_track: Option<TrackId>,
    active_layers: Option<Vec<String>>,
    publish_layers: u64,
    roster: Roster,
    stats: ReceiverStats,
    events: Vec<Event>,
    frames: Vec<OutFrame>,
    rtc_timeout: Instant,
    /// An offer is wanted at this time (after the negotiation delay).
    offer_due: Option<Instant>,
    offers: u32,
    /// Size of the last offer message and its m-line count, for errors.
    last_offer: (usize, usize),
    last_subscriptions: Option<(Vec<Subscription>, Option<Vec<String>>)>,
    /// When each m-line last got another track to show.
    slot_changed: HashMap<String, Instant>,
    /// When each (sender, kind) was first subscribed, run-clock microseconds.
    subscribed_at: HashMap<(u64, TrackKind), u64>,
    connected_at: Option<Instant>,
    server_errors: Vec<String>,
    server_error_count: u64,
    next_ping: Instant,
    ping_sent: Option<(u64, Instant)>,
    nonce: u64,
    ws_rtt: Histogram,
    /// Counters already added to the shared progress.
    reported: Counters,
    receiving: bool,
    ended_us: Option<u64>,
    /// Where to join again after this session: the node the server moved us to, or where we
    /// began when the socket dropped.
    rejoin_to: Option<String>,
}

impl Session {
    fn new(
        plan: ParticipantPlan,
        shared: Arc<Shared>,
        signal: SignalClient,
        peer: MediaPeer,
        me: ParticipantId,
        others: &[ParticipantInfo],
        t0: Instant,
    ) -> Self {
        let mut roster = Roster::new(
            me,
            plan.max_height,
            plan.receive,
            plan.audio_slots,
            plan.max_video,
        );
        roster.add_participants(others);
        let now = Instant::now();
        Self {
            plan,
            shared,
            t0,
            me,
            signal,
            peer,
            source: None,
            camera_track: None,
            active_layers: None,
            publish_layers: 0,
            roster,
            stats: ReceiverStats::default(),
            events: Vec::new(),
            frames: Vec::new(),
            rtc_timeout: now,
            offer_due: None,
            offers: 0,
            last_offer: (0, 0),
            last_subscriptions: None,
            subscribed_at: HashMap::new(),
            slot_changed: HashMap::new(),
            connected_at: None,
            server_errors: Vec::new(),
            server_error_count: 0,
            next_ping: now + PING_INTERVAL,
            ping_sent: None,
            nonce: 0,
            ws_rtt: Histogram::default(),
            reported: Counters::default(),
            receiving: false,
            ended_us: None,
            rejoin_to: None,
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let result = self.main_loop().await;
        self.ended_us = Some(
            self.shared
                .clock
                .us(Instant::now().min(self.shared.leave_at)),
        );
        // Leave even after a failure, so the server does not wait for a grace period.
        let left = self.leave().await;
        result.and(left)
    }

    async fn main_loop(&mut self) -> anyhow::Result<()> {
        // The first offer: the publisher's m-lines and a slot for each track already there.
        self.negotiate().await?;
        let sleep = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            if now >= self.shared.leave_at {
                return Ok(());
            }
            let mut deadline = self
                .rtc_timeout
                .min(self.shared.leave_at)
                .min(self.next_ping);
            if let Some(due) = self.source.as_ref().and_then(MediaSource::next_due) {
                deadline = deadline.min(due);
            }
            if let Some(due) = self.offer_due {
                deadline = deadline.min(due);
            }
            sleep.as_mut().reset(deadline.into());
            tokio::select! {
                received = self.peer.recv() => {
                    let (len, from) = received.context("UDP receive")?;
                    self.peer.receive(len, from, Instant::now())?;
                }
                message = self.signal.recv() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            // Reset rather than closed (a node that died): rejoin as well.
                            self.rejoin_to = Some(self.shared.server.ws.clone());
                            return Err(e);
                        }
                    };
                    self.on_signal(message).await?;
                }
                () = &mut sleep => self.on_timer(Instant::now()).await?,
            }
            self.flush()?;
        }
    }

    async fn on_timer(&mut self, now: Instant) -> anyhow::Result<()> {
        self.peer.timeout(now)?;
        if let Some(source) = &mut self.source {
            let talking = self.plan.talk.talking(self.shared.clock.elapsed(now));
            source.poll(now, self.shared.clock.us(now), talking, &mut self.frames);
            for frame in self.frames.drain(..) {
                self.peer.write(frame, now, &self.shared.clock)?;
            }
        }
        if self.offer_due.is_some_and(|due| now >= due) {
            self.negotiate().await?;
        }
        if now >= self.next_ping {
            self.next_ping = now + PING_INTERVAL;
            self.nonce += 1;
            self.ping_sent = Some((self.nonce, now));
            self.signal
                .send(&ClientMessage::Ping { nonce: self.nonce })
                .await?;
        }
        Ok(())
    }

    /// Sends what str0m wants sent and handles its events.
    fn flush(&mut self) -> anyhow::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        self.rtc_timeout = self.peer.drain(&mut events)?;
        for event in events.drain(..) {
            self.on_event(event);
        }
        self.events = events;
        let c = self.peer.counters;
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

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                let now = Instant::now();
                self.connected_at = Some(now);
                Progress::inc(&self.shared.progress.connected);
                if self.plan.publishes() {
                    let mut source = MediaSource::new(
                        self.me.0,
                        self.plan.audio,
                        self.plan.video,
                        now,
                        self.shared.keyframe_interval,
                    );
                    if let Some(active) = &self.active_layers {
                        source.set_active_layers(active);
                    }
                    self.source = Some(source);
                }
            }
            Event::MediaData(data) => {
                let video = data.params.spec().codec == Codec::Vp8;
                let Some(probe) = Probe::find(&data.data, video) else {
                    self.stats.unreadable += 1;
                    return;
                };
                // A loudest-N slot shows whoever is loud; any other m-line one track.
                let via_slot = self.roster.is_audio_slot(data.mid);
                let expected = self.roster.track_on(data.mid).map(|t| t.participant_id.0);
                let settled = self
                    .slot_changed
                    .get(&*data.mid)
                    .is_none_or(|at| at.elapsed() > SWITCH_GRACE);
                if !via_slot && settled && expected != Some(probe.sender) {
                    self.stats.misrouted += 1;
                }
                let at = self.shared.clock.us(data.network_time);
                self.stats
                    .frame(&probe, at, data.data.len(), data.is_keyframe(), via_slot);
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

    async fn on_signal(&mut self, incoming: Incoming) -> anyhow::Result<()> {
        let message = match incoming {
            Incoming::Message(m) => *m,
            Incoming::Unreadable(_) => return Ok(()),
            Incoming::Closed | Incoming::Failed(_) => {
                self.rejoin_to = Some(self.shared.server.ws.clone());
                bail!("the server closed the signalling socket")
            }
        };
        match message {
            ServerEvent::ParticipantJoined { participant }
            | ServerEvent::ParticipantUpdated { participant } => {
                self.roster.replace_participant(&participant);
            }
            ServerEvent::ParticipantLeft { participant_id } => {
                self.roster.remove_participant(participant_id);
            }
            ServerEvent::RosterChanged {
                joined,
                left,
                updated,
            } => {
                for p in joined.iter().chain(&updated) {
                    self.roster.replace_participant(p);
                }
                for d in left {
                    self.roster.remove_participant(d.participant_id);
                }
            }
            ServerEvent::RosterPage {
                participants,
                total,
                offset,
            } => {
                for p in &participants {
                    self.roster.replace_participant(p);
                }
                self.more_roster(&participants, offset, total).await;
            }
            ServerEvent::TrackPublished { track } | ServerEvent::TrackUpdated { track } => {
                self.roster.add_track(track);
            }
            ServerEvent::TrackUnpublished { track_id } => self.roster.remove_track(track_id),
            ServerEvent::Answer { sdp, tracks } => {
                let mids = self.peer.accept_answer(&sdp, self.shared.server.ip)?;
                self.roster.mark_negotiated(&mids);
                if let Some(camera) = tracks.iter().find(|t| t.source == TrackSource::Camera) {
                    self.camera_track = Some(camera.id);
                }
            }
            ServerEvent::PublishLayers { track_id, active } => {
                self.publish_layers += 1;
                if self.camera_track == Some(track_id) {
                    // Applied when the camera starts, if it has not yet.
                    self.active_layers = Some(active.clone());
                    if let Some(source) = &mut self.source {
                        source.set_active_layers(&active);
                    }
                }
                return Ok(());
            }
            ServerEvent::Error { code, message } => {
                if OFFER_ERRORS.contains(&code.as_str()) && self.peer.offer_pending() {
                    self.peer.offer_failed();
                    let (bytes, mlines) = self.last_offer;
                    bail!(
                        "offer refused: {code}: {message} (offer: {bytes} bytes of JSON, {mlines} m-lines)"
                    );
                }
                self.server_error_count += 1;
                if self.server_errors.len() < KEEP_ERRORS {
                    self.server_errors.push(format!("{code}: {message}"));
                }
                return Ok(());
            }
            ServerEvent::Bye { reason } => bail!("the server ended the session: {reason}"),
            ServerEvent::Pong { nonce } => {
                if let Some((sent, at)) = self.ping_sent
                    && sent == nonce
                {
                    self.ws_rtt.record(at.elapsed().as_micros() as u64);
                    self.ping_sent = None;
                }
                return Ok(());
            }
            ServerEvent::Moved { url } => {
                self.rejoin_to = Some(url);
                bail!("moved by the server")
            }
            ServerEvent::Joined { .. } | ServerEvent::Waiting {} | ServerEvent::Other => {
                return Ok(());
            }
        }
        self.update_receivers().await
    }

    /// Asks for the next roster page when `page` (at `offset` of `total`) was full of
    /// publishers: their tracks matter, listeners after them do not.
    async fn more_roster(&mut self, page: &[ParticipantInfo], offset: u32, total: u32) {
        let next = offset.saturating_add(page.len() as u32);
        let last_publishes = page.last().is_some_and(|p| !p.tracks.is_empty());
        if last_publishes && next < total {
            let request = serde_json::json!({
                "type": "roster_page",
                "offset": next,
                "limit": ROSTER_PAGE,
            });
            if let Err(e) = self.signal.send_json(&request).await {
                tracing::debug!("roster page request: {e:#}");
            }
        }
    }

    /// After the roster or the negotiated m-lines changed: more slots (an offer) if needed,
    /// then the subscription list.
    async fn update_receivers(&mut self) -> anyhow::Result<()> {
        if !self.roster.allocate().is_empty() && self.offer_due.is_none() {
            self.offer_due = Some(Instant::now() + NEGOTIATION_DELAY);
        }
        self.sync_subscriptions().await
    }

    /// Sends an offer now unless one is in flight (then the answer triggers the next).
    async fn negotiate(&mut self) -> anyhow::Result<()> {
        if self.peer.offer_pending() {
            // Retried once the answer is in (update_receivers after the answer).
            self.offer_due = None;
            return Ok(());
        }
        self.offer_due = None;
        let needs = self.roster.allocate();
        let recv: Vec<TrackKind> = std::iter::repeat_n(TrackKind::Audio, needs.loudest)
            .chain(needs.tracks)
            .collect();
        let Some(offer) = self
            .peer
            .create_offer(self.plan.audio, self.plan.video, &recv)?
        else {
            return Ok(());
        };
        let mut mids = offer.recv_mids.into_iter();
        let loudest: Vec<_> = mids.by_ref().take(needs.loudest).map(|(m, _)| m).collect();
        self.roster.add_slots(loudest, mids);
        self.offers += 1;
        let message = ClientMessage::Offer {
            sdp: offer.sdp,
            tracks: offer.tracks,
        };
        let json = serde_json::to_value(&message)?;
        let mlines = json["sdp"]
            .as_str()
            .map_or(0, |sdp| sdp.matches("\nm=").count());
        self.last_offer = (json.to_string().len(), mlines);
        self.signal.send_json(&json).await
    }

    /// Sends the full subscription list (and the loudest-N slots) when it changed.
    async fn sync_subscriptions(&mut self) -> anyhow::Result<()> {
        let subscriptions = self.roster.subscriptions();
        let audio_slots = self.roster.audio_slot_mids();
        let unchanged = match &self.last_subscriptions {
            Some((subs, slots)) => *subs == subscriptions && *slots == audio_slots,
            None => subscriptions.is_empty() && audio_slots.as_ref().is_none_or(Vec::is_empty),
        };
        if unchanged {
            return Ok(());
        }
        let now = Instant::now();
        let now_us = self.shared.clock.us(now);
        let before: HashMap<&str, u64> = self
            .last_subscriptions
            .iter()
            .flat_map(|(subs, _)| subs)
            .map(|s| (s.mid.as_str(), s.track_id.0))
            .collect();
        for s in &subscriptions {
            if before.get(s.mid.as_str()) != Some(&s.track_id.0) {
                self.slot_changed.insert(s.mid.clone(), now);
            }
        }
        for s in &subscriptions {
            if let Some(track) = self.roster.track(s.track_id) {
                self.subscribed_at
                    .entry((track.participant_id.0, track.kind))
                    .or_insert(now_us);
            }
        }
        self.signal
            .send(&ClientMessage::Subscribe {
                subscriptions: subscriptions.clone(),
                audio_slots: audio_slots.clone(),
            })
            .await?;
        self.last_subscriptions = Some((subscriptions, audio_slots));
        Ok(())
    }

    /// `leave`, wait for `bye`, close the media connection.
    async fn leave(&mut self) -> anyhow::Result<()> {
        let sent = self.signal.send(&ClientMessage::Leave {}).await;
        if sent.is_ok() {
            let deadline = Instant::now() + BYE_TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline.into(), self.signal.recv()).await {
                    Ok(Ok(Incoming::Message(m))) if matches!(*m, ServerEvent::Bye { .. }) => {
                        break;
                    }
                    Ok(Ok(Incoming::Message(_) | Incoming::Unreadable(_))) => continue,
                    _ => break,
                }
            }
        }
        self.signal.close().await;
        self.peer.close();
        Ok(())
    }

    /// Fills in the result.
    fn finish(&mut self, outcome: &mut Outcome) {
        let end_us = self.ended_us.unwrap_or_else(|| {
            self.shared
                .clock
                .us(Instant::now().min(self.shared.leave_at))
        });
        // The senders whose tracks are subscribed at the end.
        let mut subscribed: HashMap<u64, (bool, bool)> = HashMap::new();
        for s in self.last_subscriptions.iter().flat_map(|(subs, _)| subs) {
            if let Some(track) = self.roster.track(s.track_id) {
                let entry = subscribed.entry(track.participant_id.0).or_default();
                match track.kind {
                    TrackKind::Audio => entry.0 = true,
                    TrackKind::Video => entry.1 = true,
                }
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
        let c = self.peer.counters;
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
        r.publish_layers = self.publish_layers;
        outcome.audio_latency = std::mem::take(&mut self.stats.audio_latency);
        outcome.video_latency = std::mem::take(&mut self.stats.video_latency);
        outcome.ws_rtt = std::mem::take(&mut self.ws_rtt);
    }
}

/// What one receiver got from each sender: the senders subscribed at the end (`subscribed`:
/// audio, video) and every sender that delivered something. Shared by the Ting and Janus
/// participants so that both report the same figures.
pub(crate) fn source_results(
    stats: &ReceiverStats,
    subscribed: &HashMap<u64, (bool, bool)>,
    subscribed_at: &HashMap<(u64, TrackKind), u64>,
) -> Vec<SourceResult> {
    let mut senders: Vec<u64> = subscribed.keys().copied().collect();
    senders.extend(stats.sources.keys().copied());
    senders.sort_unstable();
    senders.dedup();
    let since = |sender: u64, kind: TrackKind, first: Option<u64>| {
        let at = *subscribed_at.get(&(sender, kind))?;
        Some(first?.saturating_sub(at) as f64 / 1000.0)
    };
    senders
        .into_iter()
        .map(|sender| {
            let (sub_audio, sub_video) = subscribed.get(&sender).copied().unwrap_or_default();
            let s = stats.sources.get(&sender).cloned().unwrap_or_default();
            SourceResult {
                sender,
                subscribed_audio: sub_audio,
                subscribed_video: sub_video,
                audio_frames: s.audio_frames,
                audio_expected: s.audio.expected(),
                audio_lost: s.audio.lost(),
                video_frames: s.video_frames,
                video_expected: s.video.expected(),
                video_lost: s.video.lost(),
                keyframes: s.keyframes,
                layers: s.layers,
                freezes: s.freeze.count,
                frozen_ms: s.freeze.frozen_us as f64 / 1000.0,
                longest_freeze_ms: s.freeze.longest_us as f64 / 1000.0,
                first_audio_ms: since(sender, TrackKind::Audio, s.first_audio_us),
                first_video_ms: since(sender, TrackKind::Video, s.first_video_us),
            }
        })
        .collect()
}

/// Received bitrate on the wire from `from_us` (connected) to `end_us`; 0 for short spans.
pub(crate) fn recv_kbps(rx_bytes: u64, from_us: u64, end_us: u64) -> f64 {
    let secs = end_us.saturating_sub(from_us) as f64 / 1e6;
    if secs > 0.5 {
        (rx_bytes as f64 * 8.0 / secs / 1000.0).round()
    } else {
        0.0
    }
}
