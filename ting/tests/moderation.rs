//! Roles and moderation, enforced by the server: real server, real WebSockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, join, participant_of};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};
use ting_protocol::{
    ClientMessage, ErrorCode, LeaveReason, ModerationAction, ParticipantId, PublishedTrack, Role,
    ServerMessage, TrackId, TrackKind, TrackSource,
};

const GRACE: Duration = Duration::from_secs(2);

/// An SDP offer sending one audio m-line, as a browser's microphone would.
fn microphone_offer() -> ClientMessage {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().unwrap();
    ClientMessage::Offer {
        sdp: offer.to_sdp_string(),
        tracks: vec![PublishedTrack {
            mid: mid.to_string(),
            source: TrackSource::Microphone,
            muted: false,
        }],
    }
}

fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

async fn expect_error(client: &mut Client, code: ErrorCode) {
    let m = client
        .expect("an error", |m| matches!(m, ServerMessage::Error { .. }))
        .await;
    assert_eq!(error_code(&m), Some(code), "{m:?}");
}

/// Publishes a microphone and returns its track id.
async fn publish_microphone(client: &mut Client) -> TrackId {
    client.send(&microphone_offer()).await;
    let answer = client
        .expect("answer", |m| matches!(m, ServerMessage::Answer { .. }))
        .await;
    let ServerMessage::Answer { tracks, .. } = answer else {
        unreachable!()
    };
    tracks[0].id
}

/// The host makes the attendee a speaker; waits until the attendee has been told.
async fn promote(host: &mut Client, attendee: &mut Client, attendee_id: ParticipantId) {
    host.send(&ClientMessage::SetRole {
        participant_id: attendee_id,
        role: Role::Speaker,
    })
    .await;
    attendee
        .expect("promotion", |m| {
            matches!(
                m,
                ServerMessage::Moderated {
                    action: ModerationAction::RoleChanged,
                    ..
                }
            )
        })
        .await;
}

struct Meeting {
    server: TestServer,
    host: Client,
    attendee: Client,
    attendee_id: ParticipantId,
}

async fn meeting() -> Meeting {
    let server = TestServer::start(GRACE).await;
    let (mut host, _) =
        Client::join(&server, &server.token("town-hall", "hanna", Role::Host)).await;
    let (attendee, joined) =
        Client::join(&server, &server.token("town-hall", "arne", Role::Attendee)).await;
    let (attendee_id, _) = participant_of(&joined);
    host.expect_arrival().await;
    Meeting {
        server,
        host,
        attendee,
        attendee_id,
    }
}

#[tokio::test]
async fn an_attendee_speaks_only_after_a_moderator_promotes_them() {
    let Meeting {
        server,
        mut host,
        mut attendee,
        attendee_id,
    } = meeting().await;
    attendee.send(&microphone_offer()).await;
    expect_error(&mut attendee, ErrorCode::NotAllowed).await;

    attendee
        .send(&ClientMessage::RaiseHand { raised: true })
        .await;
    let participant = host.expect_update(attendee_id).await;
    assert!(participant.hand_raised);

    host.send(&ClientMessage::SetRole {
        participant_id: attendee_id,
        role: Role::Speaker,
    })
    .await;
    let notice = attendee
        .expect("notice", |m| matches!(m, ServerMessage::Moderated { .. }))
        .await;
    assert!(matches!(
        notice,
        ServerMessage::Moderated {
            action: ModerationAction::RoleChanged,
            ..
        }
    ));
    let participant = host.expect_update(attendee_id).await;
    assert_eq!(
        (participant.role, participant.hand_raised),
        (Role::Speaker, false)
    );

    let track = publish_microphone(&mut attendee).await;
    let published = host
        .expect("track", |m| {
            matches!(m, ServerMessage::TrackPublished { .. })
        })
        .await;
    assert!(matches!(published, ServerMessage::TrackPublished { track: t } if t.id == track));

    // Demoted again: the track is taken down for everyone.
    host.send(&ClientMessage::SetRole {
        participant_id: attendee_id,
        role: Role::Attendee,
    })
    .await;
    let gone = host
        .expect("unpublish", |m| {
            matches!(m, ServerMessage::TrackUnpublished { .. })
        })
        .await;
    assert_eq!(
        gone,
        ServerMessage::TrackUnpublished {
            track_id: track,
            participant_id: attendee_id
        }
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_moderators_mute_sticks_when_the_room_forbids_unmuting() {
    let Meeting {
        server,
        mut host,
        mut attendee,
        attendee_id,
    } = meeting().await;
    promote(&mut host, &mut attendee, attendee_id).await;
    let track = publish_microphone(&mut attendee).await;
    host.send(&ClientMessage::UpdateRoom {
        locked: None,
        lobby: None,
        allow_self_unmute: Some(false),
    })
    .await;
    attendee
        .expect("settings", |m| {
            matches!(m, ServerMessage::RoomUpdated { .. })
        })
        .await;

    host.send(&ClientMessage::MuteParticipant {
        participant_id: attendee_id,
        kind: TrackKind::Audio,
        muted: true,
    })
    .await;
    let muted = attendee
        .expect("mute", |m| matches!(m, ServerMessage::TrackUpdated { .. }))
        .await;
    assert!(matches!(muted, ServerMessage::TrackUpdated { track: t } if t.id == track && t.muted));
    let notice = attendee
        .expect("notice", |m| matches!(m, ServerMessage::Moderated { .. }))
        .await;
    assert_eq!(
        notice,
        ServerMessage::Moderated {
            action: ModerationAction::Muted,
            kind: Some(TrackKind::Audio),
            role: None,
            by: ParticipantId(1)
        }
    );

    attendee
        .send(&ClientMessage::Mute {
            track_id: track,
            muted: false,
        })
        .await;
    expect_error(&mut attendee, ErrorCode::NotAllowed).await;

    host.send(&ClientMessage::MuteParticipant {
        participant_id: attendee_id,
        kind: TrackKind::Audio,
        muted: false,
    })
    .await;
    attendee
        .expect("allowed", |m| {
            matches!(
                m,
                ServerMessage::Moderated {
                    action: ModerationAction::UnmuteAllowed,
                    ..
                }
            )
        })
        .await;
    attendee
        .send(&ClientMessage::Mute {
            track_id: track,
            muted: false,
        })
        .await;
    let unmuted = host
        .expect(
            "unmute",
            |m| matches!(m, ServerMessage::TrackUpdated { track: t } if !t.muted),
        )
        .await;
    assert!(matches!(unmuted, ServerMessage::TrackUpdated { track: t } if t.id == track));
    server.shutdown().await;
}

#[tokio::test]
async fn forged_moderation_is_refused() {
    let Meeting {
        server,
        mut host,
        mut attendee,
        attendee_id,
    } = meeting().await;
    let host_id = ParticipantId(1);
    let forgeries = [
        ClientMessage::SetRole {
            participant_id: attendee_id,
            role: Role::Host,
        },
        ClientMessage::SetRole {
            participant_id: attendee_id,
            role: Role::Speaker,
        },
        ClientMessage::MuteParticipant {
            participant_id: host_id,
            kind: TrackKind::Audio,
            muted: true,
        },
        ClientMessage::MuteAll {
            kind: TrackKind::Audio,
        },
        ClientMessage::RemoveParticipant {
            participant_id: host_id,
        },
        ClientMessage::UpdateRoom {
            locked: Some(true),
            lobby: None,
            allow_self_unmute: None,
        },
        ClientMessage::Admit {
            participant_id: attendee_id,
        },
    ];
    for forged in forgeries {
        attendee.send(&forged).await;
        expect_error(&mut attendee, ErrorCode::NotAllowed).await;
    }
    attendee
        .send_raw(r#"{"type":"join","version":1,"token":"x","role":"host"}"#.into())
        .await;
    expect_error(&mut attendee, ErrorCode::BadMessage).await;
    // Nobody becomes host by message, not even from a host.
    host.send(&ClientMessage::SetRole {
        participant_id: attendee_id,
        role: Role::Host,
    })
    .await;
    expect_error(&mut host, ErrorCode::NotAllowed).await;
    host.expect_silence(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_lobby_holds_newcomers_until_admitted_or_denied() {
    let Meeting {
        server,
        mut host,
        mut attendee,
        ..
    } = meeting().await;
    host.send(&ClientMessage::UpdateRoom {
        locked: None,
        lobby: Some(true),
        allow_self_unmute: None,
    })
    .await;
    attendee
        .expect("settings", |m| {
            matches!(m, ServerMessage::RoomUpdated { .. })
        })
        .await;

    let mut guest = Client::connect(&server).await;
    guest
        .send(&join(
            &server.token("town-hall", "gus", Role::Attendee),
            None,
        ))
        .await;
    assert!(matches!(
        guest.recv().await,
        Some(ServerMessage::Waiting { .. })
    ));
    let lobby = host
        .expect("lobby", |m| matches!(m, ServerMessage::LobbyUpdated { .. }))
        .await;
    let ServerMessage::LobbyUpdated { waiting } = lobby else {
        unreachable!()
    };
    assert_eq!(waiting.len(), 1);
    let guest_id = waiting[0].id;
    // In the lobby: no roster, no media, no joining in by other means.
    guest.send(&microphone_offer()).await;
    expect_error(&mut guest, ErrorCode::NotJoined).await;
    attendee
        .send(&ClientMessage::Admit {
            participant_id: guest_id,
        })
        .await;
    expect_error(&mut attendee, ErrorCode::NotAllowed).await;
    attendee.expect_silence(Duration::from_millis(200)).await;

    host.send(&ClientMessage::Admit {
        participant_id: guest_id,
    })
    .await;
    let joined = guest
        .expect("joined", |m| matches!(m, ServerMessage::Joined { .. }))
        .await;
    let ServerMessage::Joined {
        participants,
        participant,
        ..
    } = joined
    else {
        unreachable!()
    };
    assert_eq!((participant.id, participants.len()), (guest_id, 2));
    attendee.expect_arrival().await;

    let mut turned_away = Client::connect(&server).await;
    turned_away
        .send(&join(
            &server.token("town-hall", "tim", Role::Attendee),
            None,
        ))
        .await;
    assert!(matches!(
        turned_away.recv().await,
        Some(ServerMessage::Waiting { .. })
    ));
    let lobby = host
        .expect(
            "lobby",
            |m| matches!(m, ServerMessage::LobbyUpdated { waiting } if !waiting.is_empty()),
        )
        .await;
    let ServerMessage::LobbyUpdated { waiting } = lobby else {
        unreachable!()
    };
    host.send(&ClientMessage::Deny {
        participant_id: waiting[0].id,
    })
    .await;
    assert_eq!(
        turned_away.recv().await,
        Some(ServerMessage::Bye {
            reason: LeaveReason::Denied
        })
    );
    attendee.expect_silence(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_locked_room_admits_only_moderators_and_removed_people_stay_out() {
    let Meeting {
        server,
        mut host,
        attendee,
        attendee_id,
    } = meeting().await;
    host.send(&ClientMessage::RemoveParticipant {
        participant_id: attendee_id,
    })
    .await;
    host.expect_departure(attendee_id, LeaveReason::Removed)
        .await;
    let mut attendee = attendee;
    assert_eq!(
        attendee
            .expect("bye", |m| matches!(m, ServerMessage::Bye { .. }))
            .await,
        ServerMessage::Bye {
            reason: LeaveReason::Removed
        }
    );
    let mut back = Client::connect(&server).await;
    back.send(&join(
        &server.token("town-hall", "arne", Role::Attendee),
        None,
    ))
    .await;
    expect_error(&mut back, ErrorCode::NotAllowed).await;

    host.send(&ClientMessage::UpdateRoom {
        locked: Some(true),
        lobby: None,
        allow_self_unmute: None,
    })
    .await;
    host.expect("settings", |m| {
        matches!(m, ServerMessage::RoomUpdated { .. })
    })
    .await;
    let mut late = Client::connect(&server).await;
    late.send(&join(
        &server.token("town-hall", "lars", Role::Speaker),
        None,
    ))
    .await;
    expect_error(&mut late, ErrorCode::RoomLocked).await;
    let (_moderator, _) =
        Client::join(&server, &server.token("town-hall", "mona", Role::Moderator)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn mute_all_spares_the_moderators() {
    let Meeting {
        server,
        mut host,
        mut attendee,
        attendee_id,
    } = meeting().await;
    let (mut speaker, _) =
        Client::join(&server, &server.token("town-hall", "siri", Role::Speaker)).await;
    host.expect_arrival().await;
    attendee.expect_arrival().await;
    promote(&mut host, &mut attendee, attendee_id).await;
    let host_track = publish_microphone(&mut host).await;
    let tracks = [
        publish_microphone(&mut attendee).await,
        publish_microphone(&mut speaker).await,
    ];

    host.send(&ClientMessage::MuteAll {
        kind: TrackKind::Audio,
    })
    .await;
    let mut muted = Vec::new();
    while muted.len() < 2 {
        let m = speaker
            .expect(
                "muted",
                |m| matches!(m, ServerMessage::TrackUpdated { track } if track.muted),
            )
            .await;
        let ServerMessage::TrackUpdated { track } = m else {
            unreachable!()
        };
        assert_ne!(track.id, host_track, "the host keeps speaking");
        muted.push(track.id);
    }
    muted.sort();
    let mut expected = tracks.to_vec();
    expected.sort();
    assert_eq!(muted, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn moderators_find_viewers_in_the_roster_and_promote_them() {
    let server = TestServer::start(GRACE).await;
    let (mut host, _) = Client::join(&server, &server.token("hall", "host", Role::Host)).await;
    let (mut viewer, joined) =
        Client::join(&server, &server.token("hall", "vera", Role::Viewer)).await;
    let (viewer_id, _) = participant_of(&joined);
    let (mut attendee, _) =
        Client::join(&server, &server.token("hall", "atti", Role::Attendee)).await;
    let page = |viewers: bool| ClientMessage::RosterPage {
        offset: 0,
        limit: 100,
        query: Some("VER".into()),
        viewers,
    };
    let found = |m: ServerMessage| match m {
        ServerMessage::RosterPage { participants, .. } => {
            participants.iter().map(|p| p.id).collect::<Vec<_>>()
        }
        other => panic!("a roster page: {other:?}"),
    };
    let is_page = |m: &ServerMessage| matches!(m, ServerMessage::RosterPage { .. });

    // Viewers are only counted in the ordinary roster…
    host.send(&page(false)).await;
    assert_eq!(found(host.expect("page", is_page).await), vec![]);
    // …but a moderator may list them, to bring one on stage.
    host.send(&page(true)).await;
    assert_eq!(found(host.expect("page", is_page).await), vec![viewer_id]);
    // Nobody else may.
    attendee.send(&page(true)).await;
    expect_error(&mut attendee, ErrorCode::NotAllowed).await;

    promote(&mut host, &mut viewer, viewer_id).await;
    host.send(&page(false)).await;
    assert_eq!(
        found(host.expect("page", is_page).await),
        vec![viewer_id],
        "a speaker now, so listed"
    );
    server.shutdown().await;
}
