//! What a participant knows of the room's tracks, and which of its receive-only m-lines shows
//! which of them — the same bookkeeping as the web client's `allocateReceivers` and
//! `sendSubscriptions`: every remote track gets a slot, free slots are reused, new slots need an
//! offer, and `subscribe` always carries the full list of negotiated slots. With loudest-N
//! audio, a fixed number of audio m-lines are declared as `audio_slots` instead, and
//! microphones are not subscribed one by one.

use std::collections::BTreeMap;

use str0m::media::Mid;
use ting_protocol::{ParticipantId, ParticipantInfo, Subscription, TrackId, TrackInfo, TrackKind};

/// A receive-only m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub mid: Mid,
    pub kind: TrackKind,
    pub track: Option<TrackId>,
    /// Its offer was answered, so it may be named in `subscribe`.
    pub negotiated: bool,
}

/// Receive-only m-lines an offer has to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Audio m-lines for loudest-N.
    pub loudest: usize,
    /// One m-line per track that has none.
    pub tracks: Vec<TrackKind>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.loudest == 0 && self.tracks.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Roster {
    me: ParticipantId,
    /// Tile height sent with video subscriptions.
    max_height: u32,
    /// Whether this participant subscribes at all.
    receive: bool,
    /// Loudest-N audio m-lines wanted; 0: every microphone gets its own m-line.
    audio_slots: usize,
    /// Most video m-lines (a gallery page); `None`: one per camera.
    max_video: Option<usize>,
    /// The loudest-N m-lines and whether they are negotiated.
    loudest: Vec<(Mid, bool)>,
    tracks: BTreeMap<TrackId, TrackInfo>,
    slots: Vec<Slot>,
}

impl Roster {
    pub fn new(
        me: ParticipantId,
        max_height: u32,
        receive: bool,
        audio_slots: usize,
        max_video: Option<usize>,
    ) -> Self {
        Self {
            me,
            max_height,
            receive,
            audio_slots,
            max_video,
            loudest: Vec::new(),
            tracks: BTreeMap::new(),
            slots: Vec::new(),
        }
    }

    /// Everybody else, as `joined` lists them.
    pub fn add_participants(&mut self, participants: &[ParticipantInfo]) {
        for p in participants {
            self.replace_participant(p);
        }
    }

    /// A participant's tracks as announced now (`participant_joined`, `participant_updated`).
    pub fn replace_participant(&mut self, p: &ParticipantInfo) {
        self.remove_participant(p.id);
        for t in &p.tracks {
            self.add_track(t.clone());
        }
    }

    pub fn remove_participant(&mut self, id: ParticipantId) {
        self.tracks.retain(|_, t| t.participant_id != id);
    }

    pub fn add_track(&mut self, track: TrackInfo) {
        if track.participant_id != self.me {
            self.tracks.insert(track.id, track);
        }
    }

    pub fn remove_track(&mut self, id: TrackId) {
        self.tracks.remove(&id);
    }

    pub fn track(&self, id: TrackId) -> Option<&TrackInfo> {
        self.tracks.get(&id)
    }

    /// Gives every remote track a slot, reusing free ones. Returns the m-lines that are missing
    /// (loudest-N slots, and one per track still without a slot); add them with
    /// [`Roster::add_slots`].
    pub fn allocate(&mut self) -> Needs {
        for slot in &mut self.slots {
            if slot.track.is_some_and(|t| !self.tracks.contains_key(&t)) {
                slot.track = None;
            }
        }
        if !self.receive {
            return Needs::default();
        }
        let mut missing = Vec::new();
        let mut video_slots = self
            .slots
            .iter()
            .filter(|s| s.kind == TrackKind::Video)
            .count();
        for (id, track) in &self.tracks {
            if self.slots.iter().any(|s| s.track == Some(*id))
                || (self.audio_slots > 0 && track.kind == TrackKind::Audio)
            {
                continue;
            }
            match self
                .slots
                .iter_mut()
                .find(|s| s.track.is_none() && s.kind == track.kind)
            {
                Some(slot) => slot.track = Some(*id),
                None if track.kind == TrackKind::Video => {
                    // Beyond the gallery page, videos wait for a free slot.
                    if self.max_video.is_none_or(|max| video_slots < max) {
                        video_slots += 1;
                        missing.push(track.kind);
                    }
                }
                None => missing.push(track.kind),
            }
        }
        Needs {
            loudest: self.audio_slots.saturating_sub(self.loudest.len()),
            tracks: missing,
        }
    }

    /// New receive-only m-lines (not negotiated yet): loudest-N audio slots, and slots for
    /// tracks, to which waiting tracks are assigned.
    pub fn add_slots(
        &mut self,
        loudest: impl IntoIterator<Item = Mid>,
        mids: impl IntoIterator<Item = (Mid, TrackKind)>,
    ) {
        self.loudest.extend(loudest.into_iter().map(|m| (m, false)));
        for (mid, kind) in mids {
            self.slots.push(Slot {
                mid,
                kind,
                track: None,
                negotiated: false,
            });
        }
        self.allocate();
    }

    pub fn mark_negotiated(&mut self, mids: &[Mid]) {
        for slot in &mut self.slots {
            if mids.contains(&slot.mid) {
                slot.negotiated = true;
            }
        }
        for (mid, negotiated) in &mut self.loudest {
            if mids.contains(mid) {
                *negotiated = true;
            }
        }
    }

    /// `audio_slots` for `subscribe`: the negotiated loudest-N m-lines, or `None` without
    /// loudest-N.
    pub fn audio_slot_mids(&self) -> Option<Vec<String>> {
        (self.audio_slots > 0 && self.receive).then(|| {
            self.loudest
                .iter()
                .filter(|(_, negotiated)| *negotiated)
                .map(|(m, _)| m.to_string())
                .collect()
        })
    }

    pub fn is_audio_slot(&self, mid: Mid) -> bool {
        self.loudest.iter().any(|(m, _)| *m == mid)
    }

    /// The full subscription list: every negotiated slot that shows a track.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.slots
            .iter()
            .filter(|s| s.negotiated)
            .filter_map(|s| {
                let track = s.track?;
                Some(Subscription {
                    track_id: track,
                    mid: s.mid.to_string(),
                    max_height: (s.kind == TrackKind::Video).then_some(self.max_height),
                })
            })
            .collect()
    }

    /// The track shown on `mid`, if any.
    pub fn track_on(&self, mid: Mid) -> Option<&TrackInfo> {
        let slot = self.slots.iter().find(|s| s.mid == mid)?;
        self.tracks.get(&slot.track?)
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ting_protocol::TrackSource;

    fn track(id: u64, owner: u64, source: TrackSource) -> TrackInfo {
        TrackInfo {
            id: TrackId(id),
            participant_id: ParticipantId(owner),
            mid: "0".into(),
            kind: source.kind(),
            source,
            muted: false,
        }
    }

    fn person(id: u64, tracks: Vec<TrackInfo>) -> ParticipantInfo {
        // Through JSON, as it arrives (and whatever fields the type gains).
        serde_json::from_value(serde_json::json!({
            "id": id,
            "identity": format!("p{id}"),
            "name": format!("p{id}"),
            "role": "speaker",
            "tracks": tracks,
            "hand_raised": false,
        }))
        .unwrap()
    }

    #[test]
    fn tracks_get_slots_and_slots_are_reused() {
        let mut r = Roster::new(ParticipantId(9), 360, true, 0, None);
        r.add_participants(&[person(
            1,
            vec![
                track(1, 1, TrackSource::Microphone),
                track(2, 1, TrackSource::Camera),
            ],
        )]);
        // Own tracks are never received.
        r.add_track(track(3, 9, TrackSource::Camera));
        let missing = r.allocate();
        assert_eq!(missing.tracks, [TrackKind::Audio, TrackKind::Video]);
        assert_eq!(missing.loudest, 0);
        r.add_slots(
            [],
            [
                (Mid::from("2"), TrackKind::Audio),
                (Mid::from("3"), TrackKind::Video),
            ],
        );
        assert!(r.allocate().is_empty());
        assert_eq!(r.audio_slot_mids(), None);
        // Not negotiated yet: nothing to subscribe.
        assert!(r.subscriptions().is_empty());
        r.mark_negotiated(&[Mid::from("2"), Mid::from("3")]);
        let subs = r.subscriptions();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].mid, "2");
        assert_eq!(subs[0].max_height, None);
        assert_eq!(subs[1].track_id, TrackId(2));
        assert_eq!(subs[1].max_height, Some(360));
        assert_eq!(r.track_on(Mid::from("3")).map(|t| t.id), Some(TrackId(2)));

        // Participant 1 leaves and 2 arrives with a camera: the video slot is reused.
        r.remove_participant(ParticipantId(1));
        r.add_track(track(4, 2, TrackSource::Camera));
        assert!(r.allocate().is_empty());
        let subs = r.subscriptions();
        assert_eq!(subs.len(), 1);
        assert_eq!((subs[0].track_id, subs[0].mid.as_str()), (TrackId(4), "3"));
    }

    #[test]
    fn receive_off_subscribes_to_nothing() {
        let mut r = Roster::new(ParticipantId(9), 360, false, 0, None);
        r.add_track(track(1, 1, TrackSource::Microphone));
        assert!(r.allocate().is_empty());
        assert!(r.subscriptions().is_empty());
    }

    #[test]
    fn loudest_n_replaces_microphone_subscriptions() {
        let mut r = Roster::new(ParticipantId(9), 180, true, 2, None);
        r.add_track(track(1, 1, TrackSource::Microphone));
        r.add_track(track(2, 1, TrackSource::Camera));
        let needs = r.allocate();
        assert_eq!(needs.loudest, 2);
        assert_eq!(needs.tracks, [TrackKind::Video]);
        r.add_slots(
            [Mid::from("0"), Mid::from("1")],
            [(Mid::from("2"), TrackKind::Video)],
        );
        assert!(r.allocate().is_empty());
        assert_eq!(r.audio_slot_mids(), Some(vec![]));
        r.mark_negotiated(&[Mid::from("0"), Mid::from("1"), Mid::from("2")]);
        assert_eq!(
            r.audio_slot_mids(),
            Some(vec!["0".to_owned(), "1".to_owned()])
        );
        assert!(r.is_audio_slot(Mid::from("1")));
        let subs = r.subscriptions();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].track_id, TrackId(2));
    }

    #[test]
    fn a_gallery_page_caps_the_video_slots() {
        let mut r = Roster::new(ParticipantId(9), 180, true, 0, Some(2));
        for i in 1..=4 {
            r.add_track(track(i, i, TrackSource::Camera));
        }
        let needs = r.allocate();
        assert_eq!(needs.tracks, [TrackKind::Video, TrackKind::Video]);
        r.add_slots(
            [],
            [
                (Mid::from("0"), TrackKind::Video),
                (Mid::from("1"), TrackKind::Video),
            ],
        );
        r.mark_negotiated(&[Mid::from("0"), Mid::from("1")]);
        assert!(r.allocate().is_empty());
        let shown =
            |r: &Roster| -> Vec<u64> { r.subscriptions().iter().map(|s| s.track_id.0).collect() };
        assert_eq!(shown(&r), [1, 2]);
        // Somebody on the page leaves: the next video takes the slot.
        r.remove_participant(ParticipantId(1));
        assert!(r.allocate().is_empty());
        assert_eq!(shown(&r), [3, 2]);
    }
}
