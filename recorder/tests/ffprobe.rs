//! The writers' files checked by independent tools: ffprobe reads codecs and durations, and
//! ffmpeg decodes every frame without an error. Real media: Opus from libopus, VP8 from
//! ffmpeg's libvpx (an IVF file made for the test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::process::Command;

use serde_json::Value;
use ting_recorder::test_media::{
    decode_errors, opus_packets, probe, video_frames_decoded, vp8_frames,
};
use ting_recorder::{OggOpusWriter, VideoFormat, WebmWriter};

fn seconds(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

#[test]
fn opus_in_ogg_decodes_with_the_right_duration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speaker.ogg");
    let mut writer = OggOpusWriter::new(File::create(&path).unwrap(), 7, 1).unwrap();
    // Start near the 32-bit edge: the file must not notice the wrap.
    let mut ts = u32::MAX - 960 * 20;
    for packet in opus_packets(5, false) {
        writer.push(&packet, ts).unwrap();
        ts = ts.wrapping_add(960);
    }
    writer.finish().unwrap();
    let info = probe(&path);
    assert_eq!(info["streams"][0]["codec_name"], "opus");
    let duration = seconds(&info["format"]["duration"]);
    assert!((duration - 5.0).abs() < 0.05, "duration {duration}");
    assert_eq!(decode_errors(&path), "");
}

#[test]
fn vp8_and_opus_in_webm_decode_and_line_up() {
    let dir = tempfile::tempdir().unwrap();
    let frames = vp8_frames(dir.path(), 3);
    let format = VideoFormat::from_vp8_keyframe(&frames[0].0).unwrap();
    assert_eq!((format.width, format.height), (320, 240));
    let path = dir.path().join("camera.webm");
    let mut writer = WebmWriter::new(File::create(&path).unwrap(), Some(format), Some(1)).unwrap();
    let audio = opus_packets(3, false);
    // Interleave as they would arrive: 30 fps video (3000 ticks) and 50 audio packets a second.
    let (mut v, mut a) = (0usize, 0usize);
    while v < frames.len() || a < audio.len() {
        let video_ms = v as u64 * 1000 / 30;
        let audio_ms = a as u64 * 20;
        if v < frames.len() && (a >= audio.len() || video_ms <= audio_ms) {
            let (frame, keyframe) = &frames[v];
            writer
                .push_video(frame, 1_000_000 + v as u32 * 3000, *keyframe)
                .unwrap();
            v += 1;
        } else {
            writer.push_audio(&audio[a], 77 + a as u32 * 960).unwrap();
            a += 1;
        }
    }
    writer.finish().unwrap();
    let info = probe(&path);
    let streams = info["streams"].as_array().unwrap();
    let codec = |kind: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .cloned()
            .unwrap()
    };
    assert_eq!(codec("video")["codec_name"], "vp8");
    assert_eq!(codec("audio")["codec_name"], "opus");
    let (video_start, audio_start) = (
        seconds(&codec("video")["start_time"]),
        seconds(&codec("audio")["start_time"]),
    );
    assert!(
        (video_start - audio_start).abs() < 0.1,
        "A/V start {video_start} vs {audio_start}"
    );
    let duration = seconds(&info["format"]["duration"]);
    assert!((duration - 3.0).abs() < 0.1, "duration {duration}");
    assert_eq!(decode_errors(&path), "");
}

#[test]
fn a_killed_recorder_leaves_playable_files() {
    let dir = tempfile::tempdir().unwrap();
    let frames = vp8_frames(dir.path(), 4);
    let format = VideoFormat::from_vp8_keyframe(&frames[0].0).unwrap();
    let webm_path = dir.path().join("killed.webm");
    let ogg_path = dir.path().join("killed.ogg");
    let mut webm = WebmWriter::new(File::create(&webm_path).unwrap(), Some(format), None).unwrap();
    let mut ogg = OggOpusWriter::new(File::create(&ogg_path).unwrap(), 1, 1).unwrap();
    for (i, (frame, keyframe)) in frames.iter().enumerate() {
        webm.push_video(frame, i as u32 * 3000, *keyframe).unwrap();
    }
    for (i, packet) in opus_packets(4, false).iter().enumerate() {
        ogg.push(packet, i as u32 * 960).unwrap();
    }
    // As if the process died: nothing is finished, nothing more is written.
    std::mem::forget(webm);
    std::mem::forget(ogg);

    let info = probe(&webm_path);
    assert_eq!(info["streams"][0]["codec_name"], "vp8");
    let count = video_frames_decoded(&webm_path) as usize;
    assert!(count >= 60, "{count} of {} frames playable", frames.len());

    let info = probe(&ogg_path);
    assert_eq!(info["streams"][0]["codec_name"], "opus");
    let duration = seconds(&info["format"]["duration"]);
    assert!(duration >= 3.0, "{duration} s of 4 playable");
}

/// Audio arriving 100 ms behind the video it goes with keeps its own timing in the file (the
/// writer reorders within its window instead of clamping audio onto the video's timeline).
#[test]
fn a_track_arriving_late_keeps_its_timing() {
    let dir = tempfile::tempdir().unwrap();
    let frames = vp8_frames(dir.path(), 2);
    let audio = opus_packets(2, false);
    let format = VideoFormat::from_vp8_keyframe(&frames[0].0).unwrap();
    let path = dir.path().join("late.webm");
    let mut writer = WebmWriter::new(File::create(&path).unwrap(), Some(format), Some(1)).unwrap();
    let ms = 1_000_000u64;
    // Arrival order: each audio packet only after the video 100 ms ahead of it.
    let (mut v, mut a) = (0usize, 0usize);
    while v < frames.len() || a < audio.len() {
        let video_ns = v as u64 * 1000 * ms / 30;
        let audio_ns = a as u64 * 20 * ms;
        if v < frames.len() && (a >= audio.len() || video_ns <= audio_ns + 100 * ms) {
            writer
                .push_video_ns(&frames[v].0, video_ns, frames[v].1)
                .unwrap();
            v += 1;
        } else {
            writer.push_audio_ns(&audio[a], audio_ns).unwrap();
            a += 1;
        }
    }
    writer.finish().unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(times.len(), audio.len());
    for pair in times.windows(2) {
        let step = pair[1] - pair[0];
        assert!(
            (step - 0.020).abs() < 0.002,
            "audio step {step} in {times:?}"
        );
    }
    assert_eq!(decode_errors(&path), "");
}
