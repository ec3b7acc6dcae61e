//! The Janus target against a real Janus (Debian's `janus`, started with the shipped
//! `loadtest/janus` configuration on a free WebSocket port): one host publishing microphone and
//! simulcast camera, two viewers; both viewers receive the host's audio and video, measured
//! through the probes like against Ting. Skipped, with a message, where Janus is not installed
//! (`scripts/install-deps` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ting_loadtest::{RunConfig, Scenario, Target};

const JANUS: &str = "/usr/bin/janus";

/// The Janus process, killed when the test ends however it ends.
struct Janus(Child);

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped configuration in a fresh folder, with the WebSocket on `port`.
fn config_dir(port: u16) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ting-janus-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("janus");
    for entry in std::fs::read_dir(shipped).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("ws_port = 8188", &format!("ws_port = {port}"));
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

/// A non-loopback IPv4 address of this machine: libnice gathers no loopback candidates.
fn media_ip() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

#[test]
fn janus_viewers_receive_the_hosts_audio_and_video() {
    if !Path::new(JANUS).exists() {
        println!("SKIPPED: {JANUS} is not installed (scripts/install-deps installs it)");
        return;
    }
    let Some(ip) = media_ip() else {
        println!("SKIPPED: no non-loopback IPv4 address for Janus' media");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = config_dir(port);
    let janus = Janus(
        Command::new(JANUS)
            .arg("--configs-folder")
            .arg(&dir)
            .arg(format!("--ice-enforce-list={ip}"))
            .arg("--debug-level=2")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "Janus did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let scenario = Scenario::parse(
        r#"
        name = "janus-test"
        room = "janus-test"
        duration_secs = 5
        ramp_per_sec = 10
        [[group]]
        role = "host"
        count = 1
        video = true
        talk = "always"
        [[group]]
        role = "viewer"
        count = 2
        "#,
    )
    .unwrap();
    let config = RunConfig {
        target: Target::Janus,
        local_ip: ip,
        server_pid: Some(janus.0.id()),
        ..RunConfig::new(scenario, format!("ws://127.0.0.1:{port}"), Vec::new())
    };
    let report = ting_loadtest::run(&config).unwrap();
    let summary = report.summary();
    println!("{summary}");
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(report.target, "janus");
    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!((report.joined, report.connected), (3, 3), "{summary}");
    let host = report.participants[0].participant_id.unwrap();
    for viewer in &report.participants[1..] {
        let from = viewer.sources.iter().find(|s| s.sender == host);
        let (audio, video) = from.map_or((0, 0), |s| (s.audio_frames, s.video_frames));
        assert!(
            audio > 50 && video > 30,
            "{} got {audio} audio and {video} video frames from the host\n{summary}",
            viewer.identity
        );
    }
    assert_eq!(report.missing_streams, 0, "{summary}");
    assert_eq!(report.misrouted_frames, 0, "{summary}");
    // max_height 360: the middle simulcast layer.
    assert!(
        report.layers["h"] > report.layers["q"] + report.layers["f"],
        "{summary}"
    );
    let usage = report.server_usage.expect("server usage with --server-pid");
    assert!(usage.rx_packets > 0 && usage.rss_kib.is_some(), "{summary}");
}
