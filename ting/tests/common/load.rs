//! Checks on load-tester reports, shared by the tests that run the load tester.

use ting_loadtest::Report;
use ting_loadtest::report::SourceResult;

/// The participant ids of those who publish video (the scenario's speakers).
pub fn speakers(report: &Report) -> Vec<u64> {
    report
        .participants
        .iter()
        .filter(|p| p.video)
        .filter_map(|p| p.participant_id)
        .collect()
}

/// Asserts that every participant received audio and video from every speaker other than
/// itself; calls `also` with each (receiver identity, what it got from that speaker) for
/// further checks.
pub fn assert_everyone_gets_the_speakers(
    report: &Report,
    mut also: impl FnMut(&ting_loadtest::report::ParticipantResult, &SourceResult),
) {
    let summary = report.summary();
    let speakers = speakers(report);
    assert!(!speakers.is_empty(), "no speaker joined\n{summary}");
    for p in &report.participants {
        for &speaker in speakers.iter().filter(|s| Some(**s) != p.participant_id) {
            let from = p.sources.iter().find(|s| s.sender == speaker);
            let (audio, video) = from.map_or((0, 0), |s| (s.audio_frames, s.video_frames));
            assert!(
                audio > 0 && video > 0,
                "{} got {audio} audio and {video} video frames from participant {speaker}\n{summary}",
                p.identity
            );
            if let Some(from) = from {
                also(p, from);
            }
        }
    }
}
