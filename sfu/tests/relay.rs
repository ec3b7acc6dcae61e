//! Rooms across two nodes, in virtual time: two SFU cores that relay tracks to each other as
//! the node links carry them (each message arrives one tick later), and str0m peers on both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use harness::Net;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_track_crosses_to_another_node_once_whatever_the_receivers_there() {
    let mut net = Net::new();
    let presenter = net.add_peer_on(false, true, 0);
    let near_viewer = net.add_peer_on(false, false, 1);
    let far_viewers: Vec<usize> = (0..3).map(|_| net.add_peer_on(true, false, 1)).collect();
    for who in std::iter::once(near_viewer).chain(far_viewers.iter().copied()) {
        net.subscribe_to(who, &[presenter], None);
    }
    net.run_for(secs(4));
    assert!(net.peers.iter().all(|p| p.connected));
    let since = net.now;
    let relayed_before: u64 = net.relay.media.values().sum();
    let forwarded_before = net.far_metrics.packets_forwarded.get();
    net.run_for(secs(3));
    for &who in std::iter::once(&near_viewer).chain(&far_viewers) {
        let audio = net.frames(who, net.peers[who].recv_audio[0], since);
        let video = net.frames(who, net.peers[who].recv_video[0], since);
        assert!(audio.len() > 120, "viewer {who} audio: {}", audio.len());
        assert!(video.len() > 70, "viewer {who} video: {}", video.len());
        assert!(video.iter().all(|f| f.from == 1), "viewer {who}");
    }
    // Three receivers on the far node, one copy on the link: the relayed packets are about
    // what one far receiver gets, not three times that.
    let relayed = net.relay.media.values().sum::<u64>() - relayed_before;
    let received = (net.far_metrics.packets_forwarded.get() - forwarded_before) as f64 / 3.0;
    assert!(
        (relayed as f64) < received * 1.3,
        "relayed {relayed} packets for 3 receivers that got {received:.0} each"
    );
    assert!(relayed as f64 > received * 0.7, "relayed {relayed}");
    // Only the layers the far receivers take cross (and audio): the top one, and the middle
    // one they start on before the selector steps up.
    assert_eq!(net.relay.media.get(&b'q'), None, "{:?}", net.relay.media);
}

#[test]
fn a_track_is_relayed_only_while_the_far_node_has_receivers() {
    let mut net = Net::new();
    let presenter = net.add_peer_on(false, true, 0);
    let far_viewer = net.add_peer_on(true, false, 1);
    net.run_for(secs(3));
    let video_relayed = |net: &Net| -> u64 {
        net.relay
            .media
            .iter()
            .filter(|(layer, _)| **layer != b'a')
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(video_relayed(&net), 0, "nobody there watches yet");
    assert!(
        net.relay.media.get(&b'a').copied().unwrap_or(0) > 50,
        "audio crosses for the far node's loudest-N: {:?}",
        net.relay.media
    );
    net.subscribe_to(far_viewer, &[presenter], Some(90));
    net.run_for(secs(3));
    let watched = video_relayed(&net);
    assert!(watched > 50, "{:?}", net.relay.media);
    assert!(
        net.relay.media.get(&b'q').copied().unwrap_or(0) * 10 > watched * 9,
        "a small tile takes the small layer, and only it crosses: {:?}",
        net.relay.media
    );
    let id = net.peers[far_viewer].id;
    net.far.set_subscriptions(net.now, id, &[]).unwrap();
    // The lease runs out within about a second.
    net.run_for(Duration::from_millis(1500));
    let stopped = video_relayed(&net);
    net.run_for(secs(2));
    assert_eq!(video_relayed(&net), stopped, "the relay stopped");
}

#[test]
fn packets_lost_between_nodes_are_asked_for_again() {
    let mut net = Net::new();
    let presenter = net.add_peer_on(false, true, 0);
    let far_viewer = net.add_peer_on(true, false, 1);
    net.subscribe_to(far_viewer, &[presenter], None);
    net.relay_loss_per_mille = 50;
    net.run_for(secs(3));
    let since = net.now;
    net.run_for(secs(4));
    let video = net.frames(far_viewer, net.peers[far_viewer].recv_video[0], since);
    assert!(
        net.relay.lost > 20,
        "the link lost packets: {}",
        net.relay.lost
    );
    assert!(
        net.far_metrics.relay_nacks.get() > 0,
        "the far node asked the origin for them"
    );
    // 4 s at 30 frames/s: with 5 % of the packets lost and not recovered, most frames of a
    // multi-packet keyframe-led stream would be broken; recovered, nearly all arrive.
    assert!(video.len() > 110, "frames: {}", video.len());
}

#[test]
fn a_speaker_on_another_node_is_heard_in_the_loudest_slots() {
    let mut net = Net::new();
    let near_speaker = net.add_peer_on(false, true, 0);
    let far_speaker = net.add_peer_on(true, true, 0);
    let quiet = net.add_peer_on(true, true, 0);
    let listener = net.add_peer_on(false, false, 2);
    net.peers[near_speaker].audio_level = -20;
    net.peers[far_speaker].audio_level = -10;
    net.peers[quiet].audio_level = -127;
    net.use_audio_slots(listener);
    net.run_for(secs(4));
    let since = net.now;
    net.run_for(secs(1));
    let (near_id, far_id) = (net.peers[near_speaker].id.0, net.peers[far_speaker].id.0);
    assert_eq!(net.heard(listener, since), [near_id, far_id].into());
}

#[test]
fn keyframe_requests_for_a_relayed_track_reach_its_publisher() {
    let mut net = Net::new();
    let presenter = net.add_peer_on(false, true, 0);
    let far_viewer = net.add_peer_on(true, false, 1);
    net.subscribe_to(far_viewer, &[presenter], None);
    net.run_for(secs(4));
    let since = net.now;
    let mid = net.peers[far_viewer].recv_video[0];
    let mut writer = net.peers[far_viewer].rtc.writer(mid).unwrap();
    writer.request_keyframe(None, harness::PLI).unwrap();
    net.run_for(Duration::from_millis(300));
    assert!(
        harness::count_keyframe_requests(&net.peers[presenter], since) >= 1,
        "the PLI crossed to the origin and on to the publisher"
    );
}
