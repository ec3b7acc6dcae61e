//! Just enough SDP reading for WHIP/WHEP, whose offers carry no Ting metadata: which m-lines
//! there are, their kind, mid and direction. Full SDP handling is str0m's job.

use ting_protocol::TrackKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `None` for non-audio/video sections (data channels).
    pub kind: Option<TrackKind>,
    pub mid: Option<String>,
    /// Whether the offerer sends on it (`sendonly` / `sendrecv`, the default).
    pub sends: bool,
    /// Whether the offerer receives on it (`recvonly` / `sendrecv`).
    pub receives: bool,
}

pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            let kind = match rest.split(' ').next() {
                Some("audio") => Some(TrackKind::Audio),
                Some("video") => Some(TrackKind::Video),
                _ => None,
            };
            sections.push(MediaSection {
                kind,
                mid: None,
                sends: true,
                receives: true,
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            continue;
        };
        match line {
            "a=sendonly" => (section.sends, section.receives) = (true, false),
            "a=recvonly" => (section.sends, section.receives) = (false, true),
            "a=inactive" => (section.sends, section.receives) = (false, false),
            "a=sendrecv" => (section.sends, section.receives) = (true, true),
            _ => {
                if let Some(mid) = line.strip_prefix("a=mid:") {
                    section.mid = Some(mid.to_owned());
                }
            }
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kinds_mids_and_directions() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let s = media_sections(sdp);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].kind, s[0].mid.as_deref(), s[0].sends, s[0].receives),
            (Some(TrackKind::Audio), Some("0"), true, false)
        );
        assert_eq!(
            (s[1].kind, s[1].sends, s[1].receives),
            (Some(TrackKind::Video), false, true)
        );
        assert_eq!(s[2].kind, None);
    }

    #[test]
    fn garbage_yields_nothing() {
        assert!(media_sections("hello\nworld").is_empty());
        assert!(media_sections("").is_empty());
    }
}
