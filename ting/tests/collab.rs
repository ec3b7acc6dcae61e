//! Collaboration over a real WebSocket and HTTP against a real server, on SQLite and on
//! PostgreSQL: catch-up by sequence, idempotent writes, restarts, the tus file drop, links,
//! and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Client, TempDir, TestServer, keys, temp_dir};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ting_protocol::collab::{Channel, CollabErrorCode, ObjectName};
use ting_protocol::{ClientMessage, PROTOCOL_VERSION, Role, RoomId, ServerMessage};
use ting_signalling::Claims;

/// `None`: SQLite in the server's data directory.
type Db = Option<String>;

fn postgres() -> Db {
    Some(
        std::env::var("TING_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    )
}

/// A room name no other test (or earlier run on the same PostgreSQL) uses.
fn fresh_room(tag: &str) -> String {
    format!("{tag}-{}", hex::encode(rand::random::<[u8; 6]>()))
}

fn main_object() -> ObjectName {
    ObjectName::new("main").unwrap()
}

async fn start(db: &Db) -> TestServer {
    TestServer::start_with_collab(db.clone(), temp_dir("collab")).await
}

async fn collab_client(server: &TestServer, room: &str, identity: &str, role: Role) -> Client {
    let mut client = Client::connect(server).await;
    client
        .send(&ClientMessage::CollabJoin {
            version: PROTOCOL_VERSION,
            token: server.token(room, identity, role),
        })
        .await;
    let joined = client.recv().await.expect("collab_joined");
    assert!(
        matches!(joined, ServerMessage::CollabJoined { .. }),
        "{joined:?}"
    );
    client
}

fn write(channel: Channel, op_id: &str, body: Value) -> ClientMessage {
    ClientMessage::Collab {
        channel,
        object: main_object(),
        op_id: Some(op_id.to_owned()),
        volatile: false,
        body,
    }
}

fn subscribe(channel: Channel, since: Option<u64>) -> ClientMessage {
    ClientMessage::CollabSubscribe {
        channel,
        object: main_object(),
        since,
    }
}

/// Receives until `synced`, returning the seqs of events and whether a snapshot came.
async fn catch_up(client: &mut Client) -> (Vec<u64>, Option<Value>, u64) {
    let mut seqs = Vec::new();
    let mut snapshot = None;
    loop {
        match client.recv().await.expect("catch-up") {
            ServerMessage::Collab(event) => seqs.push(event.seq.unwrap()),
            ServerMessage::CollabSnapshot { state, .. } => snapshot = Some(state),
            ServerMessage::CollabSynced { seq, .. } => return (seqs, snapshot, seq),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn ack(client: &mut Client, op: &str) -> (u64, bool) {
    let reply = client
        .expect("an ack", |m| {
            matches!(m, ServerMessage::CollabAck { op_id, .. } if op_id == op)
                || matches!(m, ServerMessage::CollabError { .. })
        })
        .await;
    match reply {
        ServerMessage::CollabAck { seq, duplicate, .. } => (seq, duplicate),
        other => panic!("no ack for {op}: {other:?}"),
    }
}

async fn collab_error(client: &mut Client) -> CollabErrorCode {
    match client
        .expect("a collab error", |m| {
            matches!(m, ServerMessage::CollabError { .. })
        })
        .await
    {
        ServerMessage::CollabError { code, message, .. } => {
            assert!(!message.is_empty());
            code
        }
        _ => unreachable!(),
    }
}

async fn reconnect_since_returns_exactly_the_missed_events(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("since");
    let mut ann = collab_client(&server, &room, "ann", Role::Speaker).await;
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    for client in [&mut ann, &mut bob] {
        client.send(&subscribe(Channel::Chat, None)).await;
        let (_, snapshot, seq) = catch_up(client).await;
        assert!(snapshot.is_some());
        assert_eq!(seq, 0);
    }
    for i in 0..3 {
        ann.send(&write(
            Channel::Chat,
            &format!("a{i}"),
            json!({"op":"post","text":format!("first {i}")}),
        ))
        .await;
        ack(&mut ann, &format!("a{i}")).await;
    }
    let mut last_seen = 0;
    while last_seen < 3 {
        if let ServerMessage::Collab(e) = bob.recv().await.unwrap() {
            last_seen = e.seq.unwrap();
        }
    }
    bob.drop_connection();
    for i in 3..5 {
        ann.send(&write(
            Channel::Chat,
            &format!("a{i}"),
            json!({"op":"post","text":format!("while away {i}")}),
        ))
        .await;
        ack(&mut ann, &format!("a{i}")).await;
    }
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    bob.send(&subscribe(Channel::Chat, Some(last_seen))).await;
    let (seqs, snapshot, synced) = catch_up(&mut bob).await;
    assert_eq!(seqs, vec![4, 5], "exactly the missed events");
    assert!(snapshot.is_none());
    assert_eq!(synced, 5);
    // Up to date: nothing to send but `synced`.
    bob.send(&subscribe(Channel::Chat, Some(5))).await;
    assert_eq!(catch_up(&mut bob).await, (vec![], None, 5));
    // A client ahead of the server (it lost data) gets a snapshot.
    bob.send(&subscribe(Channel::Chat, Some(99))).await;
    let (_, snapshot, _) = catch_up(&mut bob).await;
    assert_eq!(snapshot.unwrap()["messages"].as_array().unwrap().len(), 5);
    server.shutdown().await;
}

/// Read markers are stored outside the log and reach only the reader's own sockets.
async fn read_markers_stay_with_their_reader(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("read");
    let mut phone = collab_client(&server, &room, "ann", Role::Speaker).await;
    let mut laptop = collab_client(&server, &room, "ann", Role::Speaker).await;
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    for client in [&mut phone, &mut laptop, &mut bob] {
        client.send(&subscribe(Channel::Chat, None)).await;
        catch_up(client).await;
    }
    bob.send(&write(
        Channel::Chat,
        "m1",
        json!({"op":"post","text":"news"}),
    ))
    .await;
    ack(&mut bob, "m1").await;
    phone
        .send(&write(Channel::Chat, "r1", json!({"op":"read","up_to":1})))
        .await;
    assert_eq!(ack(&mut phone, "r1").await, (1, false), "no event is made");
    let told = laptop
        .expect(
            "the marker on the other device",
            |m| matches!(m, ServerMessage::Collab(e) if e.body["event"] == "read"),
        )
        .await;
    let ServerMessage::Collab(told) = told else {
        unreachable!()
    };
    assert_eq!((told.seq, told.body["up_to"].as_u64()), (None, Some(1)));
    // Bob hears nothing of it; the next message is seq 2.
    bob.send(&write(
        Channel::Chat,
        "m2",
        json!({"op":"post","text":"more"}),
    ))
    .await;
    assert_eq!(ack(&mut bob, "m2").await, (2, false));
    while let Ok(Some(m)) = bob.recv_within(Duration::from_millis(200)).await {
        assert!(
            matches!(&m, ServerMessage::Collab(e) if e.body["event"] == "posted"),
            "only posts reach Bob: {m:?}"
        );
    }
    // A marker never moves back, and a new device starts from it.
    phone
        .send(&write(Channel::Chat, "r0", json!({"op":"read","up_to":0})))
        .await;
    ack(&mut phone, "r0").await;
    let mut tablet = collab_client(&server, &room, "ann", Role::Speaker).await;
    tablet.send(&subscribe(Channel::Chat, None)).await;
    let (_, snapshot, _) = catch_up(&mut tablet).await;
    assert_eq!(snapshot.unwrap()["read_up_to"], 1);
    phone
        .send(&write(
            Channel::Chat,
            "rx",
            json!({"op":"read","up_to":"soon"}),
        ))
        .await;
    assert_eq!(collab_error(&mut phone).await, CollabErrorCode::BadOp);
    server.shutdown().await;
}

async fn a_duplicate_op_id_is_applied_once(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("dup");
    let mut ann = collab_client(&server, &room, "ann", Role::Speaker).await;
    ann.send(&subscribe(Channel::Board, None)).await;
    catch_up(&mut ann).await;
    let add = json!({"op":"add_column","id":"todo","title":"To do"});
    ann.send(&write(Channel::Board, "col-1", add.clone())).await;
    assert_eq!(ack(&mut ann, "col-1").await, (1, false));
    // The retry (say after a reconnect) is acknowledged with the same seq and not applied.
    ann.send(&write(Channel::Board, "col-1", add)).await;
    assert_eq!(ack(&mut ann, "col-1").await, (1, true));
    ann.send(&write(
        Channel::Board,
        "card-1",
        json!({"op":"add_card","id":"c1","column":"todo","title":"Budget"}),
    ))
    .await;
    assert_eq!(ack(&mut ann, "card-1").await, (2, false));
    // Another identity may use the same op id: it is per author.
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    bob.send(&write(
        Channel::Board,
        "col-1",
        json!({"op":"add_column","id":"done","title":"Done"}),
    ))
    .await;
    assert_eq!(ack(&mut bob, "col-1").await, (3, false));
    // The room's objects are listed for members (what the token may read).
    let listed: Value = reqwest::Client::new()
        .get(server.url(&format!("/api/rooms/{room}/objects")))
        .bearer_auth(server.token(&room, "bob", Role::Speaker))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([{"channel":"board","name":"main"}]));
    bob.send(&subscribe(Channel::Board, None)).await;
    let (_, snapshot, seq) = catch_up(&mut bob).await;
    let board = snapshot.unwrap();
    assert_eq!(seq, 3);
    assert_eq!(board["columns"].as_object().unwrap().len(), 2);
    assert_eq!(board["cards"].as_object().unwrap().len(), 1);
    server.shutdown().await;
}

/// tus creation (`Upload-Length`, metadata) → upload URL.
async fn tus_create(
    http: &reqwest::Client,
    server: &TestServer,
    room: &str,
    token: &str,
    length: usize,
    name: &str,
) -> reqwest::Response {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    http.post(server.url(&format!("/api/files/{room}")))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", length.to_string())
        .header(
            "Upload-Metadata",
            format!(
                "filename {},filetype {}",
                b64(name),
                b64("application/octet-stream")
            ),
        )
        .send()
        .await
        .unwrap()
}

async fn tus_patch(
    http: &reqwest::Client,
    server: &TestServer,
    location: &str,
    token: &str,
    offset: u64,
    body: reqwest::Body,
    checksum: Option<&[u8]>,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = http
        .patch(server.url(location))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream");
    if let Some(data) = checksum {
        let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data));
        request = request.header("Upload-Checksum", format!("sha256 {sum}"));
    }
    request.body(body).send().await
}

async fn tus_offset(
    http: &reqwest::Client,
    server: &TestServer,
    location: &str,
    token: &str,
) -> u64 {
    let head = http
        .head(server.url(location))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    head.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Uploads `data` in one PATCH; returns the file id from the files list.
async fn upload(server: &TestServer, room: &str, token: &str, name: &str, data: &[u8]) -> String {
    let http = reqwest::Client::new();
    let created = tus_create(&http, server, room, token, data.len(), name).await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let done = tus_patch(
        &http,
        server,
        &location,
        token,
        0,
        data.to_vec().into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 204);
    file_ids(server, room)
        .await
        .last()
        .cloned()
        .expect("the file is listed")
}

async fn file_ids(server: &TestServer, room: &str) -> Vec<String> {
    let mut client = collab_client(server, room, "lister", Role::Speaker).await;
    client
        .send(&ClientMessage::CollabSubscribe {
            channel: Channel::Files,
            object: main_object(),
            since: None,
        })
        .await;
    let (_, snapshot, _) = catch_up(&mut client).await;
    let files = snapshot.unwrap()["files"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut listed: Vec<(i64, String)> = files
        .values()
        .map(|f| {
            (
                f["at"].as_i64().unwrap(),
                f["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    listed.into_iter().map(|(_, id)| id).collect()
}

async fn restart_keeps_chat_boards_whiteboard_and_files(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("restart");
    let token = server.token(&room, "ann", Role::Host);
    let mut ann = collab_client(&server, &room, "ann", Role::Host).await;
    ann.send(&write(
        Channel::Chat,
        "m1",
        json!({"op":"post","text":"before the restart"}),
    ))
    .await;
    ack(&mut ann, "m1").await;
    ann.send(&write(Channel::Whiteboard, "w1", json!({"op":"upsert","elements":[{"id":"s1","type":"freedraw","version":1,"version_nonce":5,"points":[[0,0],[10,10]]}]}))).await;
    ack(&mut ann, "w1").await;
    ann.send(&write(
        Channel::Board,
        "b1",
        json!({"op":"add_column","id":"todo","title":"To do"}),
    ))
    .await;
    ack(&mut ann, "b1").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let file = upload(&server, &room, &token, "minutes.pdf", &data).await;
    drop(ann);
    let dir: TempDir = server.stop_keeping_data().await;

    let server = TestServer::start_with_collab(db.clone(), dir).await;
    let mut ann = collab_client(&server, &room, "ann", Role::Host).await;
    ann.send(&subscribe(Channel::Chat, None)).await;
    let (_, chat, _) = catch_up(&mut ann).await;
    let texts: Vec<String> = chat.unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        texts.contains(&"before the restart".to_owned()),
        "{texts:?}"
    );
    assert!(
        texts.len() == 2,
        "the message and the file announcement: {texts:?}"
    );
    ann.send(&subscribe(Channel::Whiteboard, None)).await;
    let (_, scene, _) = catch_up(&mut ann).await;
    assert_eq!(scene.unwrap()["elements"][0]["id"], "s1");
    ann.send(&subscribe(Channel::Board, None)).await;
    let (_, board, _) = catch_up(&mut ann).await;
    assert_eq!(board.unwrap()["columns"]["todo"]["title"], "To do");
    let body = reqwest::Client::new()
        .get(server.url(&format!("/api/files/{room}/{file}?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.bytes().await.unwrap().as_ref(), data.as_slice());
    // New writes continue the sequence.
    ann.send(&write(
        Channel::Board,
        "b2",
        json!({"op":"add_column","id":"done","title":"Done"}),
    ))
    .await;
    assert_eq!(ack(&mut ann, "b2").await, (2, false));
    server.shutdown().await;
}

async fn tus_uploads_resume_verify_and_refuse(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("tus");
    let token = server.token(&room, "ann", Role::Speaker);
    let http = reqwest::Client::new();
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let created = tus_create(
        &http,
        &server,
        &room,
        &token,
        data.len(),
        "../../etc/passwd",
    )
    .await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["tus-resumable"], "1.0.0");
    assert!(created.headers().contains_key("upload-expires"));
    let location = created.headers()["location"].to_str().unwrap().to_owned();

    // The first PATCH dies at 50 %: what arrived is kept.
    let half = data[..data.len() / 2].to_vec();
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from(half)),
        Err(std::io::Error::other("network gone")),
    ]);
    let interrupted = tus_patch(
        &http,
        &server,
        &location,
        &token,
        0,
        reqwest::Body::wrap_stream(broken),
        None,
    )
    .await;
    assert!(interrupted.is_err() || interrupted.unwrap().status() != 204);
    let mut offset = 0;
    for _ in 0..50 {
        offset = tus_offset(&http, &server, &location, &token).await;
        if offset > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        offset > 0 && offset <= data.len() as u64 / 2,
        "kept {offset} bytes"
    );
    // A wrong offset is refused with the right one; a bad checksum is refused and discarded.
    let stale = tus_patch(
        &http,
        &server,
        &location,
        &token,
        0,
        vec![1, 2, 3].into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), 409);
    let rest = data[offset as usize..].to_vec();
    let corrupt = tus_patch(
        &http,
        &server,
        &location,
        &token,
        offset,
        vec![0u8; rest.len()].into(),
        Some(&rest),
    )
    .await
    .unwrap();
    assert_eq!(corrupt.status().as_u16(), 460);
    assert_eq!(tus_offset(&http, &server, &location, &token).await, offset);
    // Resume with a checksum: done.
    let done = tus_patch(
        &http,
        &server,
        &location,
        &token,
        offset,
        rest.clone().into(),
        Some(&rest),
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 204);
    assert_eq!(
        done.headers()["upload-offset"],
        data.len().to_string().as_str()
    );

    let file = file_ids(&server, &room).await.pop().unwrap();
    let download = http
        .get(server.url(&format!("/api/files/{room}/{file}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let disposition = download.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("..%2F..%2Fetc%2Fpasswd"),
        "{disposition}"
    );
    let sha = download.headers()["x-content-sha256"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = download.bytes().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&body)),
        hex::encode(Sha256::digest(&data))
    );
    assert_eq!(sha, hex::encode(Sha256::digest(&data)));
    // Over quota (5 MiB per room in tests, 2 MB used) or over the file size limit (4 MiB):
    // refused at creation, before a byte is sent.
    let over = tus_create(&http, &server, &room, &token, 4_000_000, "big.bin").await;
    assert_eq!(over.status(), 413);
    assert!(over.text().await.unwrap().contains("quota"));
    let too_big = tus_create(&http, &server, &room, &token, 5 << 20, "huge.bin").await;
    assert_eq!(too_big.status(), 413);
    // No tus header, no token, another room's token.
    let bare = http
        .post(server.url(&format!("/api/files/{room}")))
        .bearer_auth(&token)
        .header("Upload-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 412);
    let anonymous = http
        .get(server.url(&format!("/api/files/{room}/{file}")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let other_room = server.token("elsewhere", "eve", Role::Speaker);
    let foreign = http
        .get(server.url(&format!("/api/files/{room}/{file}")))
        .bearer_auth(&other_room)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // Another member cannot continue or end ann's upload.
    let created = tus_create(&http, &server, &room, &token, 10, "x").await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let bob = server.token(&room, "bob", Role::Speaker);
    let hijack = tus_patch(
        &http,
        &server,
        &location,
        &bob,
        0,
        vec![0u8; 10].into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(hijack.status(), 404);
    let ended = http
        .delete(server.url(&location))
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    assert_eq!(
        http.head(server.url(&location))
            .bearer_auth(&token)
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Links: a valid one downloads that file only; an expired one is refused; a link cannot
    // join the meeting.
    let link: Value = http
        .post(server.url(&format!("/api/files/{room}/{file}/link")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    assert_eq!(
        http.get(server.url(url)).send().await.unwrap().status(),
        200
    );
    let link_token = url.split("token=").nth(1).unwrap();
    let small = upload(&server, &room, &token, "other.txt", b"other").await;
    let wrong_file = http
        .get(server.url(&format!("/api/files/{room}/{small}?token={link_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_file.status(), 403);
    let expired = keys()
        .sign(&Claims {
            room: RoomId::new(&room).unwrap(),
            sub: "file-link".into(),
            name: String::new(),
            role: Role::Viewer,
            exp: ting_signalling::token::unix_now() - 600,
            iat: None,
            region: None,
            collab: Some(vec!["files:read".into()]),
            file: Some(file.clone()),
        })
        .unwrap();
    let refused = http
        .get(server.url(&format!("/api/files/{room}/{file}?token={expired}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let mut sneaky = Client::connect(&server).await;
    sneaky.send(&common::join(link_token, None)).await;
    assert!(matches!(
        sneaky.recv().await,
        Some(ServerMessage::Error { .. })
    ));
    server.shutdown().await;
}

async fn bad_input_gets_clear_errors_and_harms_nobody(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("bad");
    let mut ann = collab_client(&server, &room, "ann", Role::Speaker).await;
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    bob.send(&subscribe(Channel::Chat, None)).await;
    catch_up(&mut bob).await;
    // Oversize body.
    ann.send(&write(
        Channel::Chat,
        "big",
        json!({"op":"post","text":"x".repeat(70_000)}),
    ))
    .await;
    assert_eq!(collab_error(&mut ann).await, CollabErrorCode::TooLarge);
    // Unknown channel and malformed envelope: protocol errors.
    ann.send_raw(r#"{"type":"collab","channel":"spreadsheet","object":"main","body":{}}"#.into())
        .await;
    assert!(matches!(
        ann.recv().await,
        Some(ServerMessage::Error { .. })
    ));
    ann.send_raw(r#"{"type":"collab","channel":"chat","object":"../etc","body":{}}"#.into())
        .await;
    assert!(matches!(
        ann.recv().await,
        Some(ServerMessage::Error { .. })
    ));
    // Malformed ops.
    for (i, body) in [
        json!({"op":"post"}),
        json!({"op":"explode"}),
        json!("text"),
        json!({"op":"edit","id":77,"text":"x"}),
    ]
    .into_iter()
    .enumerate()
    {
        ann.send(&write(Channel::Chat, &format!("bad{i}"), body))
            .await;
        let code = collab_error(&mut ann).await;
        assert!(
            matches!(code, CollabErrorCode::BadOp | CollabErrorCode::NotFound),
            "{code:?}"
        );
    }
    // A volatile frame needs a subscription.
    ann.send(&ClientMessage::Collab {
        channel: Channel::Whiteboard,
        object: main_object(),
        op_id: None,
        volatile: true,
        body: json!({"cursor":{"x":1,"y":2}}),
    })
    .await;
    assert_eq!(collab_error(&mut ann).await, CollabErrorCode::NotSubscribed);
    // Write without the right: a viewer on the board; a guest whose link grants chat reading.
    let mut viewer = collab_client(&server, &room, "vic", Role::Viewer).await;
    viewer
        .send(&write(
            Channel::Board,
            "v1",
            json!({"op":"add_column","title":"mine"}),
        ))
        .await;
    assert_eq!(collab_error(&mut viewer).await, CollabErrorCode::NotAllowed);
    let guest_token = keys()
        .sign(&Claims {
            room: RoomId::new(&room).unwrap(),
            sub: "guest".into(),
            name: "Guest".into(),
            role: Role::Attendee,
            exp: ting_signalling::token::unix_now() + 600,
            iat: None,
            region: None,
            collab: Some(vec!["chat:read".into()]),
            file: None,
        })
        .unwrap();
    let mut guest = Client::connect(&server).await;
    guest
        .send(&ClientMessage::CollabJoin {
            version: PROTOCOL_VERSION,
            token: guest_token,
        })
        .await;
    guest.recv().await.unwrap();
    guest
        .send(&write(
            Channel::Chat,
            "g1",
            json!({"op":"post","text":"spam"}),
        ))
        .await;
    assert_eq!(collab_error(&mut guest).await, CollabErrorCode::NotAllowed);
    guest.send(&subscribe(Channel::Board, None)).await;
    assert_eq!(collab_error(&mut guest).await, CollabErrorCode::NotAllowed);
    guest.send(&subscribe(Channel::Chat, None)).await;
    catch_up(&mut guest).await;
    // Bob saw none of it; a good write still works for everyone.
    ann.send(&write(
        Channel::Chat,
        "good",
        json!({"op":"post","text":"hello"}),
    ))
    .await;
    assert_eq!(ack(&mut ann, "good").await, (1, false));
    match bob.recv().await.unwrap() {
        ServerMessage::Collab(e) => {
            assert_eq!((e.seq, e.body["text"].as_str()), (Some(1), Some("hello")))
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

/// Two nodes of a cluster on one PostgreSQL and one Redis: a write on one node reaches a
/// subscriber on the other, and concurrent writes from both get one order everywhere.
#[tokio::test]
async fn cluster_nodes_share_objects_through_postgres_and_a_redis_stream() {
    let prefix = format!(
        "ting-test:collab-{}",
        hex::encode(rand::random::<[u8; 4]>())
    );
    let url = postgres().unwrap();
    let a = TestServer::start_cluster_with_collab(
        common::cluster_node(&prefix, "node-a", 50),
        url.clone(),
    )
    .await;
    let b = TestServer::start_cluster_with_collab(common::cluster_node(&prefix, "node-b", 50), url)
        .await;
    let room = fresh_room("cluster");
    let mut ann = collab_client(&a, &room, "ann", Role::Speaker).await;
    let mut bob = collab_client(&b, &room, "bob", Role::Speaker).await;
    for client in [&mut ann, &mut bob] {
        client.send(&subscribe(Channel::Chat, None)).await;
        catch_up(client).await;
    }
    ann.send(&write(
        Channel::Chat,
        "hello",
        json!({"op":"post","text":"from node a"}),
    ))
    .await;
    ack(&mut ann, "hello").await;
    let event = tokio::time::timeout(
        Duration::from_secs(3),
        bob.expect("the event from node a", |m| {
            matches!(m, ServerMessage::Collab(_))
        }),
    )
    .await
    .expect("fanned out within 3 s");
    let ServerMessage::Collab(event) = event else {
        unreachable!()
    };
    assert_eq!(
        (event.seq, event.body["text"].as_str()),
        (Some(1), Some("from node a"))
    );

    // Both nodes write at once: every write is stored once, and both subscribers see the same
    // sequence.
    const EACH: usize = 15;
    for i in 0..EACH {
        ann.send(&write(
            Channel::Chat,
            &format!("a{i}"),
            json!({"op":"post","text":format!("a{i}")}),
        ))
        .await;
        bob.send(&write(
            Channel::Chat,
            &format!("b{i}"),
            json!({"op":"post","text":format!("b{i}")}),
        ))
        .await;
    }
    async fn collect(client: &mut Client, want: usize) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        let mut other = Vec::new();
        while seen.len() < want {
            let Ok(Some(message)) = client.recv_within(Duration::from_secs(10)).await else {
                panic!("after {} events: {seen:?}, also {other:?}", seen.len());
            };
            match message {
                ServerMessage::Collab(e) if e.seq.unwrap() > 1 => {
                    seen.push((e.seq.unwrap(), e.body["text"].as_str().unwrap().to_owned()));
                }
                ServerMessage::CollabAck { .. } => {}
                message => other.push(message),
            }
        }
        seen
    }
    let (seen_a, seen_b) = tokio::join!(collect(&mut ann, 2 * EACH), collect(&mut bob, 2 * EACH));
    assert_eq!(seen_a, seen_b, "one order on both nodes");
    let seqs: Vec<u64> = seen_a.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (2..=(2 * EACH as u64 + 1)).collect::<Vec<_>>());
    let mut texts: Vec<&str> = seen_a.iter().map(|(_, t)| t.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 2 * EACH, "each write stored once");
    a.shutdown().await;
    b.shutdown().await;
}

/// An S3-compatible server (moto, installed by scripts/install-deps) on a free port, stopped
/// when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; scripts/install-deps does)");
        // Owned at once, so that a failure below still stops it (Drop).
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if reqwest::get(&server.endpoint).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not start on {}", server.endpoint);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The file drop on S3-compatible object storage: an upload interrupted and resumed, its
/// chunks and the file as objects in the bucket, the download intact.
#[tokio::test]
async fn the_file_drop_works_on_s3_compatible_storage() {
    let s3 = S3Server::start().await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.put(format!("{}/ting-files", s3.endpoint))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let dir = temp_dir("s3");
    let settings = ting::config::CollabSettings {
        database_url: format!("sqlite://{}", dir.0.join("ting.db").display()),
        blobs: ting_collab::BlobConfig::S3 {
            bucket: "ting-files".into(),
            endpoint: Some(s3.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        },
        limits: ting_collab::FileLimits::default(),
    };
    let server = TestServer::start_with_collab_settings(settings, dir).await;
    let room = fresh_room("s3");
    let token = server.token(&room, "ann", Role::Speaker);
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(40_503) >> 9) as u8)
        .collect();
    let created = tus_create(&http, &server, &room, &token, data.len(), "scan.pdf").await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let first = data[..1_000_000].to_vec();
    let done = tus_patch(
        &http,
        &server,
        &location,
        &token,
        0,
        first.clone().into(),
        Some(&first),
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 204);
    assert_eq!(
        tus_offset(&http, &server, &location, &token).await,
        1_000_000
    );
    let rest = data[1_000_000..].to_vec();
    let done = tus_patch(
        &http,
        &server,
        &location,
        &token,
        1_000_000,
        rest.into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 204);
    let file = file_ids(&server, &room).await.pop().unwrap();
    let body = http
        .get(server.url(&format!("/api/files/{room}/{file}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(
        hex::encode(Sha256::digest(body.bytes().await.unwrap())),
        hex::encode(Sha256::digest(&data))
    );
    // The bucket holds the file under ids only, and no chunks are left.
    let listing = http
        .get(format!("{}/ting-files?list-type=2", s3.endpoint))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&format!("files/{room}/{file}")),
        "{listing}"
    );
    assert!(!listing.contains("uploads/"), "{listing}");
    server.shutdown().await;
}

/// Collab follows the meeting's rules: nothing from the lobby, nothing after removal, and
/// rights follow the current role.
#[tokio::test]
async fn lobby_removal_and_demotion_apply_to_collaboration() {
    let server = start(&None).await;
    let room = fresh_room("rules");
    let (mut host, _) = Client::join(&server, &server.token(&room, "hana", Role::Host)).await;
    let (mut mo, joined) = Client::join(&server, &server.token(&room, "mo", Role::Moderator)).await;
    let (mo_id, _) = common::participant_of(&joined);
    let (mut bob, joined) = Client::join(&server, &server.token(&room, "bob", Role::Speaker)).await;
    let (bob_id, _) = common::participant_of(&joined);
    bob.send(&write(
        Channel::Chat,
        "m1",
        json!({"op":"post","text":"hello"}),
    ))
    .await;
    let (message, _) = ack(&mut bob, "m1").await;

    // A moderator demoted to speaker no longer deletes other people's messages.
    host.send(&ClientMessage::SetRole {
        participant_id: mo_id,
        role: Role::Speaker,
    })
    .await;
    mo.expect("the role change", |m| {
        matches!(m, ServerMessage::Moderated { .. })
    })
    .await;
    mo.send(&write(
        Channel::Chat,
        "d1",
        json!({"op":"delete","id":message}),
    ))
    .await;
    assert_eq!(collab_error(&mut mo).await, CollabErrorCode::NotAllowed);

    // A newcomer waiting in the lobby sees nothing of the room.
    host.send(&ClientMessage::UpdateRoom {
        locked: None,
        lobby: Some(true),
        allow_self_unmute: None,
    })
    .await;
    host.expect("settings", |m| {
        matches!(m, ServerMessage::RoomUpdated { .. })
    })
    .await;
    let mut waiting = Client::connect(&server).await;
    waiting
        .send(&common::join(
            &server.token(&room, "wendy", Role::Speaker),
            None,
        ))
        .await;
    assert!(matches!(
        waiting.recv().await,
        Some(ServerMessage::Waiting { .. })
    ));
    waiting.send(&subscribe(Channel::Chat, None)).await;
    assert_eq!(
        collab_error(&mut waiting).await,
        CollabErrorCode::NotAllowed
    );

    // Removed: the meeting socket ends, and neither a collab socket nor HTTP lets bob back.
    let bob_token = server.token(&room, "bob", Role::Speaker);
    host.send(&ClientMessage::RemoveParticipant {
        participant_id: bob_id,
    })
    .await;
    bob.expect("bye", |m| matches!(m, ServerMessage::Bye { .. }))
        .await;
    let mut again = Client::connect(&server).await;
    again
        .send(&ClientMessage::CollabJoin {
            version: PROTOCOL_VERSION,
            token: bob_token.clone(),
        })
        .await;
    assert!(matches!(
        again.recv().await,
        Some(ServerMessage::Error { .. })
    ));
    let files = reqwest::Client::new()
        .get(server.url(&format!("/api/rooms/{room}/objects")))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(files.status(), 403);
    server.shutdown().await;
}

/// A client far behind gets a snapshot instead of hundreds of events.
async fn a_client_far_behind_gets_a_snapshot(db: Db) {
    let server = start(&db).await;
    let room = fresh_room("behind");
    let mut ann = collab_client(&server, &room, "ann", Role::Speaker).await;
    for i in 0..520 {
        ann.send(&write(
            Channel::Chat,
            &format!("p{i}"),
            json!({"op":"post","text":format!("n{i}")}),
        ))
        .await;
    }
    ack(&mut ann, "p519").await;
    let mut bob = collab_client(&server, &room, "bob", Role::Speaker).await;
    bob.send(&subscribe(Channel::Chat, Some(1))).await;
    let (events, snapshot, seq) = catch_up(&mut bob).await;
    assert_eq!((events.len(), seq), (0, 520));
    assert_eq!(snapshot.unwrap()["messages"].as_array().unwrap().len(), 50);
    bob.send(&subscribe(Channel::Chat, Some(400))).await;
    let (events, snapshot, _) = catch_up(&mut bob).await;
    assert_eq!(events, (401..=520).collect::<Vec<_>>());
    assert!(snapshot.is_none());
    server.shutdown().await;
}

/// The meeting's moderator actions land in the room's audit log, readable by moderators only.
#[tokio::test]
async fn moderator_actions_are_audited() {
    let server = start(&None).await;
    let room = fresh_room("audit");
    let host_token = server.token(&room, "hana", Role::Host);
    let (mut host, _) = Client::join(&server, &host_token).await;
    let (_carl, joined) = Client::join(&server, &server.token(&room, "carl", Role::Speaker)).await;
    let (carl_id, _) = common::participant_of(&joined);
    host.send(&ClientMessage::MuteParticipant {
        participant_id: carl_id,
        kind: ting_protocol::TrackKind::Audio,
        muted: true,
    })
    .await;
    let http = reqwest::Client::new();
    let audit_url = server.url(&format!("/api/rooms/{room}/audit"));
    let mut entries = Value::Null;
    for _ in 0..40 {
        entries = http
            .get(&audit_url)
            .bearer_auth(&host_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if entries.as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = &entries[0];
    assert_eq!(entry["action"], "participant muted");
    assert_eq!(entry["actor"], "hana");
    assert!(
        entry["detail"].as_str().unwrap().contains("carl"),
        "{entry}"
    );
    let speaker = server.token(&room, "carl", Role::Speaker);
    let refused = http
        .get(&audit_url)
        .bearer_auth(&speaker)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    server.shutdown().await;
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(None).await })*
        }
        mod postgresql {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres()).await })*
        }
    };
}

on_both_databases!(
    reconnect_since_returns_exactly_the_missed_events,
    a_client_far_behind_gets_a_snapshot,
    read_markers_stay_with_their_reader,
    a_duplicate_op_id_is_applied_once,
    restart_keeps_chat_boards_whiteboard_and_files,
    tus_uploads_resume_verify_and_refuse,
    bad_input_gets_clear_errors_and_harms_nobody,
);
