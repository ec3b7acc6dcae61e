//! Retention, audit and export against a real SQLite store and local file storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::stream;
use serde_json::json;
use ting_collab::{Access, Actor, BlobConfig, Collab, CollabConfig, FileLimits};
use ting_protocol::collab::{Channel, ObjectName};
use tokio_util::sync::CancellationToken;

fn actor(identity: &str, moderator: bool) -> Actor {
    Actor {
        room: "records".into(),
        identity: identity.into(),
        name: identity.into(),
        moderator,
        access: Access::full(),
    }
}

#[tokio::test]
async fn retention_removes_old_records_audits_and_keeps_boards() {
    let dir = tempfile::tempdir().unwrap();
    let collab = Collab::start(
        CollabConfig {
            database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
            blobs: BlobConfig::Local(dir.path().join("files")),
            limits: FileLimits::default(),
            fanout: None,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let (ann, host) = (actor("ann", false), actor("host", true));
    let main = ObjectName::new("main").unwrap();
    for i in 0..3 {
        collab
            .write(
                &ann,
                Channel::Chat,
                &main,
                None,
                json!({"op":"post","text":format!("m{i}")}),
            )
            .await
            .unwrap();
    }
    collab
        .write(
            &ann,
            Channel::Board,
            &main,
            None,
            json!({"op":"add_column","id":"todo","title":"To do"}),
        )
        .await
        .unwrap();
    let upload = collab
        .create_upload(&ann, 5, "notes.txt", "text/plain")
        .await
        .unwrap();
    let body = stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(
        b"hello",
    ))]);
    let (_, file) = collab
        .append_upload(&ann, &upload.id, 0, None, body)
        .await
        .unwrap();
    assert!(file.is_some());

    // Only moderators set rules; a rule of 30 days removes nothing yet.
    assert!(collab.set_retention(&ann, Some(30)).await.is_err());
    let report = collab.set_retention(&host, Some(30)).await.unwrap();
    assert_eq!((report.messages, report.files), (0, 0));

    // Forty days later the sweep applies the rule.
    let later = ting_collab_now() + 40 * 24 * 3600 * 1000;
    let report = collab.apply_retention("records", 30, later).await.unwrap();
    assert_eq!(
        report.messages, 4,
        "three messages and the file announcement"
    );
    assert_eq!(report.files, 1);
    assert!(report.log_events > 0);
    let (messages, _) = collab
        .read(&ann, Channel::Chat, &main, |s| match s {
            ting_collab::ObjectState::Chat(chat) => chat.messages().count(),
            _ => 99,
        })
        .await
        .unwrap();
    assert_eq!(messages, 0);
    // The board keeps its current state (its log went, its snapshot stays).
    let (columns, _) = collab
        .read(&ann, Channel::Board, &main, |s| match s {
            ting_collab::ObjectState::Board(board) => board.columns.len(),
            _ => 99,
        })
        .await
        .unwrap();
    assert_eq!(columns, 1);
    assert!(collab.store().files("records").await.unwrap().is_empty());

    let audit = collab.audit_log(&host).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"retention set"), "{actions:?}");
    assert!(actions.contains(&"file expired"), "{actions:?}");
    assert!(actions.contains(&"retention applied"), "{actions:?}");
    assert!(
        collab.audit_log(&ann).await.is_err(),
        "members do not read the audit log"
    );

    // Nobody follows these objects: a sweep unloads them, and they load again unchanged.
    assert!(collab.loaded_objects() >= 2);
    collab.sweep(ting_collab_now()).await;
    assert_eq!(collab.loaded_objects(), 0);
    let (columns, _) = collab
        .read(&ann, Channel::Board, &main, |s| match s {
            ting_collab::ObjectState::Board(board) => board.columns.len(),
            _ => 99,
        })
        .await
        .unwrap();
    assert_eq!(columns, 1);

    // The archive lists what is left and is audited.
    let mut archive = collab.export(&host).await.unwrap();
    let mut tar = Vec::new();
    while let Some(chunk) = archive.recv().await {
        tar.extend_from_slice(&chunk.unwrap());
    }
    let names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    for expected in [
        "manifest.json",
        "chat/main.json",
        "boards/main.json",
        "files/index.json",
        "audit.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

fn ting_collab_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
