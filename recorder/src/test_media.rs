//! Real media for tests (feature `test-media`): VP8 frames from ffmpeg's libvpx and Opus
//! packets from libopus, so that what tests record decodes in independent tools, and those
//! tools (ffprobe, ffmpeg) to check the files.

use std::path::Path;
use std::process::Command;

/// VP8 frames (data, keyframe) of ffmpeg's 320×240 test pattern at 30 fps, a keyframe each
/// second. Needs `ffmpeg` (scripts/install-deps installs it); panics without it.
pub fn vp8_frames(dir: &Path, seconds: u32) -> Vec<(Vec<u8>, bool)> {
    let ivf = dir.join("source.ivf");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
        ])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libvpx",
            "-g",
            "30",
            "-b:v",
            "300k",
        ])
        .arg(&ivf)
        .status()
        .unwrap_or_else(|e| panic!("ffmpeg (scripts/install-deps installs it): {e}"));
    assert!(status.success(), "ffmpeg made no VP8");
    let data = std::fs::read(&ivf).unwrap_or_else(|e| panic!("{}: {e}", ivf.display()));
    // IVF: a 32-byte file header, then per frame a 12-byte header (size, timestamp) and data.
    let mut frames = Vec::new();
    let mut at = 32;
    while at + 12 <= data.len() {
        let size =
            u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let Some(frame) = data.get(at + 12..at + 12 + size) else {
            break;
        };
        frames.push((frame.to_vec(), frame.first().is_some_and(|b| b & 1 == 0)));
        at += 12 + size;
    }
    frames
}

/// 20 ms Opus packets of a 440 Hz tone, `seconds` long, mono or stereo.
pub fn opus_packets(seconds: u32, stereo: bool) -> Vec<Vec<u8>> {
    let channels = if stereo {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let per_sample = if stereo { 2 } else { 1 };
    let mut encoder = opus::Encoder::new(48_000, channels, opus::Application::Voip)
        .unwrap_or_else(|e| panic!("opus encoder: {e}"));
    (0..seconds * 50)
        .map(|n| {
            let pcm: Vec<i16> = (0..960 * per_sample)
                .map(|i| {
                    let t = f64::from(n * 960 + i / per_sample) / 48_000.0;
                    ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let mut out = vec![0u8; 4000];
            let len = encoder
                .encode(&pcm, &mut out)
                .unwrap_or_else(|e| panic!("opus encode: {e}"));
            out.truncate(len);
            out
        })
        .collect()
}

/// ffprobe's view of a file: its streams' codec, type, start time and duration, and the
/// format's duration (JSON). Panics if ffprobe cannot read the file.
pub fn probe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_name,codec_type,start_time,duration:format=duration")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ffprobe's JSON: {e}"))
}

/// What ffmpeg complains about while decoding every frame (empty when the file is clean).
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg: {e}"));
    assert!(
        out.status.success(),
        "ffmpeg could not read {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many frames of the first video stream decode (0 when none, or no file).
pub fn video_frames_decoded(path: &Path) -> u32 {
    Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(0)
}
