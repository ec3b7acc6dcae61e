//! The load tester against a real in-process server: the smoke-10 scenario (shortened), with
//! real WebSockets, ICE, DTLS and SRTP on loopback. Everyone joins, everyone receives audio and
//! video from each speaker, loss stays low, and the JSON report is written and parses.

mod common;

use std::path::Path;
use std::time::Duration;

use common::load::{assert_everyone_gets_the_speakers, speakers};
use common::{SECRET, TestServer, temp_dir};
use ting_loadtest::{RunConfig, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_10_everyone_joins_hears_and_sees_every_speaker() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/scenarios/smoke-10.toml");
    let mut scenario = Scenario::load(&file).unwrap();
    scenario.duration_secs = 6.0;
    let config = RunConfig::new(
        scenario,
        format!("http://{}", server.http),
        SECRET.as_bytes().to_vec(),
    );
    // The tester blocks (it runs its own worker threads); the server runs on this runtime.
    let report = tokio::task::spawn_blocking(move || ting_loadtest::run(&config))
        .await
        .unwrap()
        .unwrap();
    let summary = report.summary();
    println!("{summary}");

    let dir = temp_dir("loadtest");
    let path = dir.0.join("report.json");
    report.write_json(&path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["planned"], 10);
    assert_eq!(json["participants"].as_array().map(Vec::len), Some(10));
    assert!(json["tester"]["overloaded"].is_boolean());

    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!((report.joined, report.connected), (10, 10), "{summary}");
    assert_eq!(speakers(&report).len(), 2);
    assert_everyone_gets_the_speakers(&report, |_, _| {});
    assert_eq!(report.received_nothing, 0, "{summary}");
    assert_eq!(report.missing_streams, 0, "{summary}");
    assert_eq!(report.misrouted_frames, 0, "{summary}");
    assert!(report.loss.audio_percent < 5.0, "{summary}");
    assert!(report.loss.video_percent < 5.0, "{summary}");
    assert!(report.audio_latency_ms.count > 0 && report.video_latency_ms.count > 0);
    server.shutdown().await;
}
