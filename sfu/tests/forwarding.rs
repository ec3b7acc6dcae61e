//! SFU core scenarios in virtual time with several str0m peers in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use harness::{Net, count_keyframe_requests};
use ting_protocol::TrackId;
use ting_sfu::{DEFAULT_MAX_SUBSCRIPTIONS, PeerOptions, SfuError, SfuEvent, SubscribeRequest};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Three peers, each publishing and subscribed to the other two.
fn three_way() -> Net {
    let mut net = Net::new();
    for _ in 0..3 {
        net.add_peer(true, 2);
    }
    net.subscribe_to(0, &[1, 2], None);
    net.subscribe_to(1, &[0, 2], None);
    net.subscribe_to(2, &[0, 1], None);
    net
}

#[test]
fn three_peers_receive_each_others_audio_and_video() {
    let mut net = three_way();
    net.run_for(secs(3));
    assert!(net.peers.iter().all(|p| p.connected), "all peers connected");
    let since = net.now;
    net.run_for(secs(3));
    for who in 0..3 {
        let others: Vec<u64> = (0..3).filter(|o| *o != who).map(|o| o as u64 + 1).collect();
        for (slot, expected_from) in others.iter().enumerate() {
            let audio = net.frames(who, net.peers[who].recv_audio[slot], since);
            let video = net.frames(who, net.peers[who].recv_video[slot], since);
            // 3 s of 50 audio frames/s and 30 video frames/s, allowing for start-up.
            assert!(
                audio.len() > 120,
                "peer {who} audio from {expected_from}: {}",
                audio.len()
            );
            assert!(
                video.len() > 70,
                "peer {who} video from {expected_from}: {}",
                video.len()
            );
            assert!(
                audio
                    .iter()
                    .all(|f| f.from == *expected_from && f.layer == b'a')
            );
            assert!(video.iter().all(|f| f.from == *expected_from));
        }
    }
    assert!(
        net.events
            .iter()
            .filter(|e| matches!(e, SfuEvent::Connected { .. }))
            .count()
            == 3,
        "the core reports each connection"
    );
}

#[test]
fn a_new_subscriber_starts_with_a_keyframe() {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.run_for(secs(3));
    let requests_before = count_keyframe_requests(&net.peers[publisher], net.now);
    let since = net.now;
    net.subscribe_to(viewer, &[publisher], None);
    net.run_for(secs(2));
    let video = net.frames(viewer, net.peers[viewer].recv_video[0], since);
    assert!(video.len() > 30, "video flows: {}", video.len());
    assert!(video[0].keyframe, "the first forwarded frame is a keyframe");
    assert!(
        count_keyframe_requests(&net.peers[publisher], since) > requests_before,
        "the SFU asked the publisher for a keyframe instead of waiting for the periodic one"
    );
}

#[test]
fn keyframe_requests_from_receivers_are_forwarded_but_rate_limited() {
    let mut net = three_way();
    net.run_for(secs(4));
    let since = net.now;
    // Receivers 1 and 2 both ask for keyframes of peer 0's video 20 times within one second.
    for _ in 0..20 {
        for who in [1, 2] {
            let mid = net.peers[who].recv_video[0];
            let mut writer = net.peers[who].rtc.writer(mid).unwrap();
            writer.request_keyframe(None, harness::PLI).unwrap();
        }
        net.run_for(Duration::from_millis(50));
    }
    let forwarded = count_keyframe_requests(&net.peers[0], since);
    assert!(forwarded >= 1, "requests reach the publisher");
    assert!(
        forwarded <= 4,
        "40 requests in 1 s are limited to a few: {forwarded}"
    );
}

#[test]
fn a_muted_track_is_not_forwarded_until_unmuted() {
    let mut net = three_way();
    net.run_for(secs(3));
    let (audio, video) = (net.peers[0].audio_track, net.peers[0].video_track);
    let now = net.now;
    net.sfu.set_muted(now, audio, true).unwrap();
    net.sfu.set_muted(now, video, true).unwrap();
    net.run_for(Duration::from_millis(200)); // frames in flight drain
    let since = net.now;
    net.run_for(secs(2));
    let mid_audio = net.peers[1].recv_audio[0];
    let mid_video = net.peers[1].recv_video[0];
    assert_eq!(
        net.frames(1, mid_audio, since).len(),
        0,
        "muted audio is not forwarded"
    );
    assert_eq!(
        net.frames(1, mid_video, since).len(),
        0,
        "muted video is not forwarded"
    );
    // Peer 2's media still reaches peer 1.
    assert!(net.frames(1, net.peers[1].recv_audio[1], since).len() > 80);

    let now = net.now;
    net.sfu.set_muted(now, audio, false).unwrap();
    net.sfu.set_muted(now, video, false).unwrap();
    let since = net.now;
    net.run_for(secs(2));
    let video = net.frames(1, mid_video, since);
    assert!(net.frames(1, mid_audio, since).len() > 80, "audio resumes");
    assert!(video.len() > 30, "video resumes");
    assert!(video[0].keyframe, "video resumes on a keyframe");
}

#[test]
fn a_receivers_layer_drops_with_its_bandwidth_and_recovers() {
    layer_follows_bandwidth(PeerOptions::default());
}

#[test]
fn without_a_bandwidth_estimator_a_viewers_layer_follows_its_loss() {
    layer_follows_bandwidth(PeerOptions {
        estimate_bandwidth: false,
    });
}

/// A viewer gets the top layer on an ample link, the lowest while its link is narrow (and
/// only that), and the top one again once the link widens.
fn layer_follows_bandwidth(viewer_options: PeerOptions) {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    net.peer_options = viewer_options;
    let viewer = net.add_peer(false, 1);
    net.subscribe_to(viewer, &[publisher], None);
    let mid = net.peers[viewer].recv_video[0];
    let reached_full = net.run_until(secs(30), |n| n.last_layer(viewer, mid) == Some(b'f'));
    assert!(
        reached_full,
        "with ample bandwidth the top layer is sent: {:?}",
        net.last_layer(viewer, mid)
    );

    // The viewer's downlink shrinks to 400 kbit/s: only the lowest layer (150 kbit/s) fits.
    net.set_downlink(viewer, Some(400_000));
    let dropped = net.run_until(secs(30), |n| n.last_layer(viewer, mid) == Some(b'q'));
    assert!(
        dropped,
        "layer drops to q: {:?}",
        net.last_layer(viewer, mid)
    );
    // Frames of the old layer still queued or being retransmitted may complete late.
    net.run_for(secs(1));
    let since = net.now;
    net.run_for(secs(5));
    let frames = net.frames(viewer, mid, since);
    assert!(
        frames.len() > 100,
        "video keeps flowing at the low layer: {}",
        frames.len()
    );
    let layers: String = frames.iter().map(|f| f.layer as char).collect();
    assert!(
        frames.iter().all(|f| f.layer == b'q'),
        "and stays there while the link is narrow: {layers}"
    );

    net.set_downlink(viewer, None);
    let recovered = net.run_until(secs(60), |n| n.last_layer(viewer, mid) == Some(b'f'));
    assert!(
        recovered,
        "layer recovers: {:?}",
        net.last_layer(viewer, mid)
    );
}

#[test]
fn a_small_tile_gets_a_small_layer() {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.subscribe_to(viewer, &[publisher], Some(90));
    net.run_for(secs(5));
    let since = net.now;
    net.run_for(secs(2));
    let frames = net.frames(viewer, net.peers[viewer].recv_video[0], since);
    assert!(frames.len() > 40);
    assert!(
        frames.iter().all(|f| f.layer == b'q'),
        "a 90 px tile gets the 90 px layer"
    );
}

#[test]
fn the_loudest_participant_becomes_active_speaker() {
    let mut net = three_way();
    for p in &mut net.peers {
        p.audio_level = -127;
    }
    net.peers[2].audio_level = -15;
    net.run_for(secs(4));
    let speaker = net.events.iter().rev().find_map(|e| match e {
        SfuEvent::ActiveSpeaker { participant, .. } => Some(*participant),
        _ => None,
    });
    assert_eq!(speaker, Some(Some(net.peers[2].id)));
}

#[test]
fn garbage_datagrams_do_not_disturb_the_room() {
    let mut net = three_way();
    net.run_for(secs(3));
    let since = net.now;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 1],
        vec![0x80; 12],
        vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42],
        (0..1400u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    let sfu_addr = harness::sfu_addr();
    for round in 0..50 {
        for bytes in &junk {
            // From strangers and from a real participant's address.
            let stranger = format!("10.9.9.9:{}", 1000 + round).parse().unwrap();
            let now = net.now;
            net.sfu
                .handle_receive(now, str0m::net::Protocol::Udp, stranger, sfu_addr, bytes);
            let known = net.peers[1].addr;
            net.sfu
                .handle_receive(now, str0m::net::Protocol::Udp, known, sfu_addr, bytes);
        }
        net.run_for(Duration::from_millis(40));
    }
    for who in 0..3 {
        for slot in 0..2 {
            let audio = net.frames(who, net.peers[who].recv_audio[slot], since);
            assert!(
                audio.len() > 80,
                "peer {who} still receives audio: {}",
                audio.len()
            );
        }
    }
    assert_eq!(net.sfu.peer_count(), 3);
}

#[test]
fn a_departed_publisher_stops_being_forwarded() {
    let mut net = three_way();
    net.run_for(secs(3));
    let gone = net.peers[0].id;
    net.sfu.remove_peer(gone);
    net.run_for(Duration::from_millis(200));
    let since = net.now;
    net.run_for(secs(1));
    assert!(net.frames(1, net.peers[1].recv_video[0], since).is_empty());
    assert!(
        net.frames(1, net.peers[1].recv_video[1], since).len() > 20,
        "the others continue"
    );
    assert_eq!(net.sfu.peer_count(), 2);
}

#[test]
fn h264_simulcast_is_forwarded_and_starts_on_a_keyframe() {
    let mut net = Net::new();
    net.video_codec = str0m::format::Codec::H264;
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.subscribe_to(viewer, &[publisher], Some(90));
    net.run_for(secs(4));
    let video = net.frames(viewer, net.peers[viewer].recv_video[0], net.now - secs(4));
    assert!(video.len() > 60, "H.264 video flows: {}", video.len());
    assert!(video[0].keyframe, "starting on an IDR frame");
    assert!(
        video.iter().all(|f| f.layer == b'q' && f.from == 1),
        "the small layer of peer 1"
    );
}

#[test]
fn lost_packets_are_recovered_by_retransmission() {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.subscribe_to(viewer, &[publisher], None);
    net.run_for(secs(3));
    // One packet in ten to the viewer is lost. Top-layer frames span several packets, so
    // without NACK/RTX well over a tenth of the frames would never complete.
    net.set_downlink_loss(viewer, 100);
    net.run_for(secs(1));
    let since = net.now;
    net.run_for(secs(4));
    let frames = net.frames(viewer, net.peers[viewer].recv_video[0], since);
    assert!(
        net.dropped > 50,
        "the link really dropped packets: {}",
        net.dropped
    );
    // 30 frames/s for 4 s; allow a little for frames still in flight at the edges.
    assert!(
        frames.len() >= 114,
        "frames completed despite loss: {}/120",
        frames.len()
    );
    let nacks = net.metrics.nacks.with_label_values(&["in"]).get();
    assert!(nacks > 0, "the viewer's NACKs reached the SFU: {nacks}");
}

#[test]
fn receivers_hear_the_loudest_three_and_the_set_changes_with_hysteresis() {
    let mut net = Net::new();
    for _ in 0..6 {
        net.add_peer(true, 0);
    }
    let listener = net.add_peer(false, 3);
    net.use_audio_slots(listener);
    for (i, level) in [-10, -20, -30, -127, -127, -127].into_iter().enumerate() {
        net.peers[i].audio_level = level;
    }
    net.run_for(secs(3));
    let since = net.now;
    net.run_for(secs(1));
    assert_eq!(
        net.heard(listener, since),
        [1, 2, 3].into(),
        "the three who speak"
    );

    // A fourth voice about as loud as the third: no flapping between them.
    net.peers[3].audio_level = -28;
    let since = net.now;
    net.run_for(secs(3));
    assert_eq!(
        net.heard(listener, since),
        [1, 2, 3].into(),
        "the slots stay put"
    );

    // The third falls silent: the fourth takes its slot quickly.
    net.peers[2].audio_level = -127;
    net.run_for(Duration::from_millis(1500));
    let since = net.now;
    net.run_for(secs(1));
    assert_eq!(net.heard(listener, since), [1, 2, 4].into());
    // Silent publishers never reached the listener at all.
    assert!(!net.heard(listener, since - secs(10)).contains(&5));
}

#[test]
fn a_speaker_in_the_loudest_set_hears_the_others_not_itself() {
    let mut net = Net::new();
    for _ in 0..4 {
        net.add_peer(true, 3);
    }
    for (i, level) in [-10, -15, -20, -25].into_iter().enumerate() {
        net.peers[i].audio_level = level;
    }
    net.use_audio_slots(0);
    net.run_for(secs(4));
    let since = net.now;
    net.run_for(secs(1));
    assert_eq!(net.heard(0, since), [2, 3, 4].into());
}

#[test]
fn layers_nobody_watches_are_paused_and_resume_when_asked_for() {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.subscribe_to(viewer, &[publisher], Some(90));
    net.run_for(secs(6));
    assert_eq!(
        net.peers[publisher].active_layers,
        Some(vec!["q".to_string()]),
        "only the small layer is watched"
    );
    // The viewer enlarges the tile: the top layer is asked for again and arrives.
    net.subscribe_to(viewer, &[publisher], None);
    let mid = net.peers[viewer].recv_video[0];
    // The bandwidth estimate, low while only the small layer flowed, has to probe up first.
    let resumed = net.run_until(secs(30), |n| n.last_layer(viewer, mid) == Some(b'f'));
    assert!(
        resumed,
        "the paused layer resumed: {:?}",
        net.peers[publisher].active_layers
    );

    // Nobody watches at all: the video pauses entirely.
    let id = net.peers[viewer].id;
    net.sfu.set_subscriptions(net.now, id, &[]).unwrap();
    net.run_for(secs(5));
    assert_eq!(net.peers[publisher].active_layers, Some(vec![]));
}

#[test]
fn a_top_layer_that_starts_late_is_not_paused_before_it_arrives() {
    let mut net = Net::new();
    let publisher = net.add_peer(true, 0);
    let viewer = net.add_peer(false, 1);
    net.peers[publisher].late_layer = Some(("f", net.now + secs(5)));
    net.subscribe_to(viewer, &[publisher], None);
    let mid = net.peers[viewer].recv_video[0];
    let got_f = net.run_until(secs(30), |n| n.last_layer(viewer, mid) == Some(b'f'));
    let announced: Vec<&Vec<String>> = net
        .events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::LayersWanted { active, .. } => Some(active),
            _ => None,
        })
        .collect();
    assert!(
        got_f,
        "the late top layer reached the viewer; announced: {announced:?}"
    );
    assert!(
        announced.iter().all(|a| a.iter().any(|r| r == "f")),
        "f was never paused while wanted: {announced:?}"
    );
}

#[test]
fn a_receiver_gets_at_most_the_capped_number_of_streams() {
    let mut net = Net::new();
    let viewer = net.add_peer(false, 1);
    net.run_for(secs(1));
    let id = net.peers[viewer].id;
    let mid = net.peers[viewer].recv_video[0].to_string();
    let request = |n: usize| -> Vec<SubscribeRequest> {
        (0..n)
            .map(|i| SubscribeRequest {
                // Tracks that do not exist are skipped, so only the count matters here.
                track_id: TrackId(10_000 + i as u64),
                mid: mid.clone(),
                max_height: None,
            })
            .collect()
    };
    let now = net.now;
    assert_eq!(
        net.sfu
            .set_subscriptions(now, id, &request(DEFAULT_MAX_SUBSCRIPTIONS + 1)),
        Err(SfuError::TooManySubscriptions {
            max: DEFAULT_MAX_SUBSCRIPTIONS
        })
    );
    assert_eq!(
        net.sfu
            .set_subscriptions(now, id, &request(DEFAULT_MAX_SUBSCRIPTIONS)),
        Ok(())
    );
}
