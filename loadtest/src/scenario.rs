//! Scenario files: who joins, how fast, for how long, and what each participant sends and
//! receives. The format is documented in `loadtest/README.md`; [`Scenario::plan`] turns a
//! scenario into one [`ParticipantPlan`] per simulated participant.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use ting_protocol::{Role, RoomId};

/// Most participants one scenario may ask for (every load loop is bounded).
pub const MAX_PARTICIPANTS: u32 = 20_000;
/// Longest hold a scenario may ask for.
pub const MAX_DURATION_SECS: f64 = 24.0 * 3600.0;

/// A load scenario, as read from a TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in identities and the report.
    pub name: String,
    /// Free text shown in the summary.
    #[serde(default)]
    pub description: String,
    /// Room name; with `rooms > 1` the rooms are `<room>-1`, `<room>-2`, …
    pub room: String,
    /// How many copies of the room (each with all groups) run side by side.
    #[serde(default = "one")]
    pub rooms: u32,
    /// How long everybody stays after the last participant started joining, in seconds.
    pub duration_secs: f64,
    /// Joins started per second, over all rooms.
    pub ramp_per_sec: f64,
    /// Length of one speaker's turn for groups with `talk = "turns"`, in seconds.
    #[serde(default = "default_turn_secs")]
    pub turn_secs: f64,
    /// Periodic keyframe interval of the simulated cameras, in seconds.
    #[serde(default = "default_keyframe_secs")]
    pub keyframe_interval_secs: f64,
    /// Participant groups, in joining order.
    #[serde(rename = "group", default)]
    pub groups: Vec<Group>,
}

/// Participants that behave alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Used in identities (`<scenario>-<name>-<n>`); default: the role.
    #[serde(default)]
    pub name: Option<String>,
    /// host, moderator, speaker, attendee or viewer (in the join token).
    pub role: Role,
    /// Participants in this group (per room).
    pub count: u32,
    /// Publish a microphone. Default: true for roles that may publish.
    #[serde(default)]
    pub audio: Option<bool>,
    /// Publish a camera (VP8 simulcast q/h/f). Default: false.
    #[serde(default)]
    pub video: bool,
    /// When the microphone carries speech; silence is sent as DTX.
    #[serde(default)]
    pub talk: Talk,
    /// Tile height (pixels) asked for in video subscriptions; picks the simulcast layer.
    #[serde(default = "default_max_height")]
    pub max_height: u32,
    /// Subscribe to everything the others publish, like the web client. Default: true.
    #[serde(default = "yes")]
    pub receive: bool,
    /// Loudest-N audio: this many audio m-lines the server fills with the loudest speakers
    /// (default 3, as the web client). 0: one subscription per microphone instead.
    #[serde(default = "default_audio_slots")]
    pub audio_slots: u32,
    /// Most videos received at once, like a gallery page; the others wait for a free slot.
    /// Default: every camera (as the web client does today).
    #[serde(default)]
    pub max_video: Option<u32>,
}

/// A microphone's talk pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Talk {
    /// The room's `turns` speakers take turns of `turn_secs` each.
    #[default]
    Turns,
    /// Talks all the time.
    Always,
    /// Never talks: DTX only.
    Silent,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_turn_secs() -> f64 {
    5.0
}
fn default_keyframe_secs() -> f64 {
    3.0
}
fn default_max_height() -> u32 {
    360
}
fn default_audio_slots() -> u32 {
    3
}

/// When a participant's microphone talks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TalkPlan {
    Always,
    Silent,
    /// Talks in turn `slot` of every `of` turns of `turn_secs`.
    Turn {
        slot: u32,
        of: u32,
        turn_secs: f64,
    },
}

impl TalkPlan {
    /// Whether the participant talks `elapsed` after the start of the run.
    pub fn talking(&self, elapsed: Duration) -> bool {
        match *self {
            TalkPlan::Always => true,
            TalkPlan::Silent => false,
            TalkPlan::Turn {
                slot,
                of,
                turn_secs,
            } => {
                let turn = (elapsed.as_secs_f64() / turn_secs) as u64;
                of > 0 && turn % u64::from(of) == u64::from(slot)
            }
        }
    }
}

/// Everything one simulated participant needs to know.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParticipantPlan {
    /// Position in the run, 0-based.
    pub index: usize,
    pub room: RoomId,
    pub identity: String,
    pub name: String,
    pub group: String,
    pub role: Role,
    pub audio: bool,
    pub video: bool,
    pub talk: TalkPlan,
    pub max_height: u32,
    pub receive: bool,
    pub audio_slots: usize,
    pub max_video: Option<usize>,
    /// When to start joining, from the start of the run.
    pub start_offset: Duration,
}

impl ParticipantPlan {
    pub fn publishes(&self) -> bool {
        self.audio || self.video
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid scenario file {}", path.display()))
    }

    /// Parses and checks scenario TOML.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks the values serde cannot: ranges, room names, roles that may not publish.
    pub fn validate(&self) -> anyhow::Result<()> {
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        ensure!(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "name must be non-empty letters, digits, '-' or '_' (got {:?})",
            self.name
        );
        ensure!(
            self.rooms >= 1 && self.rooms <= MAX_PARTICIPANTS,
            "rooms must be 1..={MAX_PARTICIPANTS} (got {})",
            self.rooms
        );
        for i in [1, self.rooms] {
            let room = self.room_name(i);
            RoomId::new(&room).map_err(|e| anyhow::anyhow!("room {room:?}: {e}"))?;
        }
        ensure!(
            finite_positive(self.duration_secs) && self.duration_secs <= MAX_DURATION_SECS,
            "duration_secs must be > 0 and at most {MAX_DURATION_SECS} (got {})",
            self.duration_secs
        );
        ensure!(
            finite_positive(self.ramp_per_sec),
            "ramp_per_sec must be > 0 (got {})",
            self.ramp_per_sec
        );
        ensure!(
            finite_positive(self.turn_secs),
            "turn_secs must be > 0 (got {})",
            self.turn_secs
        );
        ensure!(
            finite_positive(self.keyframe_interval_secs),
            "keyframe_interval_secs must be > 0 (got {})",
            self.keyframe_interval_secs
        );
        if self.groups.is_empty() {
            bail!("at least one [[group]] is needed");
        }
        for (i, g) in self.groups.iter().enumerate() {
            let what = format!("group {} ({})", i + 1, g.label());
            ensure!(g.count >= 1, "{what}: count must be at least 1");
            if !g.role.may_publish() && (g.audio == Some(true) || g.video) {
                bail!(
                    "{what}: role {} may not publish; remove audio/video or use host, moderator \
                     or speaker",
                    g.label_role()
                );
            }
            ensure!(
                (1..=4320).contains(&g.max_height),
                "{what}: max_height must be 1..=4320 (got {})",
                g.max_height
            );
            ensure!(
                g.audio_slots <= 16,
                "{what}: audio_slots must be 0..=16 (got {})",
                g.audio_slots
            );
            ensure!(
                g.max_video.is_none_or(|m| m >= 1),
                "{what}: max_video must be at least 1"
            );
            if let Some(name) = &g.name {
                ensure!(
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                    "{what}: name must be letters, digits, '-' or '_'"
                );
            }
        }
        let total = self.participant_count();
        ensure!(
            total >= 1 && total <= u64::from(MAX_PARTICIPANTS),
            "the scenario asks for {total} participants; at most {MAX_PARTICIPANTS} are supported"
        );
        Ok(())
    }

    /// Participants over all rooms.
    pub fn participant_count(&self) -> u64 {
        let per_room: u64 = self.groups.iter().map(|g| u64::from(g.count)).sum();
        per_room * u64::from(self.rooms)
    }

    /// The `i`-th room's name (1-based).
    pub fn room_name(&self, i: u32) -> String {
        if self.rooms == 1 {
            self.room.clone()
        } else {
            format!("{}-{i}", self.room)
        }
    }

    /// Time from the first join to the last join's start.
    pub fn ramp_duration(&self) -> Duration {
        let n = self.participant_count().saturating_sub(1);
        Duration::from_secs_f64(n as f64 / self.ramp_per_sec)
    }

    /// Scales receive-only groups (roles that may not publish) by `factor`, keeping at least one
    /// participant each; publishers keep their count, so the room keeps its shape.
    pub fn scale_audience(&mut self, factor: f64) -> anyhow::Result<()> {
        ensure!(
            factor.is_finite() && factor > 0.0,
            "scale must be > 0 (got {factor})"
        );
        for g in &mut self.groups {
            if !g.publishes() {
                g.count = ((f64::from(g.count) * factor).round() as u32).max(1);
            }
        }
        self.validate()
    }

    /// One plan per participant, in joining order: rooms fill side by side, groups in file
    /// order (speakers are usually listed first, so they are there when the audience arrives).
    pub fn plan(&self) -> anyhow::Result<Vec<ParticipantPlan>> {
        self.validate()?;
        let mut plans = Vec::new();
        // Turn slots are numbered per room over all groups with talk = "turns".
        let turn_takers: u32 = self
            .groups
            .iter()
            .filter(|g| g.publishes_audio() && g.talk == Talk::Turns)
            .map(|g| g.count)
            .sum();
        let mut slot_base = 0;
        for g in &self.groups {
            let label = g.label();
            for n in 0..g.count {
                for r in 1..=self.rooms {
                    let index = plans.len();
                    let room = RoomId::new(&self.room_name(r))
                        .map_err(|e| anyhow::anyhow!("room: {e}"))?;
                    let suffix = if self.rooms == 1 {
                        format!("{}", n + 1)
                    } else {
                        format!("{}-r{r}", n + 1)
                    };
                    let talk = match (g.publishes_audio(), g.talk) {
                        (false, _) | (true, Talk::Silent) => TalkPlan::Silent,
                        (true, Talk::Always) => TalkPlan::Always,
                        (true, Talk::Turns) => TalkPlan::Turn {
                            slot: slot_base + n,
                            of: turn_takers,
                            turn_secs: self.turn_secs,
                        },
                    };
                    plans.push(ParticipantPlan {
                        index,
                        room,
                        identity: format!("{}-{label}-{suffix}", self.name),
                        name: format!("{label} {suffix}"),
                        group: label.clone(),
                        role: g.role,
                        audio: g.publishes_audio(),
                        video: g.video,
                        talk,
                        max_height: g.max_height,
                        receive: g.receive,
                        audio_slots: g.audio_slots as usize,
                        max_video: g.max_video.map(|m| m as usize),
                        start_offset: Duration::from_secs_f64(index as f64 / self.ramp_per_sec),
                    });
                }
            }
            if g.publishes_audio() && g.talk == Talk::Turns {
                slot_base += g.count;
            }
        }
        Ok(plans)
    }
}

impl Group {
    pub fn publishes_audio(&self) -> bool {
        self.audio.unwrap_or(self.role.may_publish())
    }

    pub fn publishes(&self) -> bool {
        self.publishes_audio() || self.video
    }

    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.label_role())
    }

    fn label_role(&self) -> String {
        serde_json::to_value(self.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = r#"
        name = "smoke-10"
        room = "smoke"
        duration_secs = 10
        ramp_per_sec = 10
        [[group]]
        role = "speaker"
        count = 2
        video = true
        [[group]]
        role = "attendee"
        count = 8
        max_height = 180
    "#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let s = Scenario::parse(SMOKE).unwrap();
        assert_eq!(s.rooms, 1);
        assert_eq!(s.participant_count(), 10);
        assert_eq!(s.turn_secs, 5.0);
        assert!(s.groups[0].publishes_audio());
        assert!(!s.groups[1].publishes());
        assert_eq!(s.groups[0].talk, Talk::Turns);
        assert_eq!(s.ramp_duration(), Duration::from_millis(900));
    }

    #[test]
    fn plans_list_speakers_first_with_turns() {
        let plans = Scenario::parse(SMOKE).unwrap().plan().unwrap();
        assert_eq!(plans.len(), 10);
        assert_eq!(plans[0].identity, "smoke-10-speaker-1");
        assert!(plans[0].video && plans[0].audio);
        assert_eq!(
            plans[1].talk,
            TalkPlan::Turn {
                slot: 1,
                of: 2,
                turn_secs: 5.0
            }
        );
        assert!(!plans[2].publishes());
        assert_eq!(plans[2].role, Role::Attendee);
        assert_eq!(plans[2].max_height, 180);
        assert_eq!(plans[9].start_offset, Duration::from_millis(900));
        // Speaker 0 talks during the first turn, speaker 1 during the second.
        assert!(plans[0].talk.talking(Duration::from_secs(1)));
        assert!(!plans[1].talk.talking(Duration::from_secs(1)));
        assert!(plans[1].talk.talking(Duration::from_secs(6)));
        assert!(plans[0].talk.talking(Duration::from_secs(11)));
    }

    #[test]
    fn rooms_fill_side_by_side() {
        let text = SMOKE.replace("room = \"smoke\"", "room = \"smoke\"\nrooms = 3");
        let plans = Scenario::parse(&text).unwrap().plan().unwrap();
        assert_eq!(plans.len(), 30);
        let rooms: Vec<&str> = plans[..3].iter().map(|p| p.room.as_str()).collect();
        assert_eq!(rooms, ["smoke-1", "smoke-2", "smoke-3"]);
        assert_eq!(plans[1].identity, "smoke-10-speaker-1-r2");
    }

    #[test]
    fn scaling_keeps_the_publishers() {
        let mut s = Scenario::parse(SMOKE).unwrap();
        s.scale_audience(0.25).unwrap();
        assert_eq!(s.groups[0].count, 2);
        assert_eq!(s.groups[1].count, 2);
        s.scale_audience(0.01).unwrap();
        assert_eq!(s.groups[1].count, 1);
    }

    #[test]
    fn malformed_files_give_clear_errors() {
        let err = |text: &str| format!("{:#}", Scenario::parse(text).unwrap_err());
        let e = err("name = \"x\"\nroom = ");
        assert!(e.contains("line 2"), "{e}");
        let e = err(&SMOKE.replace("count = 8", "cout = 8"));
        assert!(e.contains("unknown field `cout`"), "{e}");
        let e = err(&SMOKE.replace("role = \"attendee\"", "role = \"emperor\""));
        assert!(e.contains("emperor"), "{e}");
        let e = err(&SMOKE.replace("ramp_per_sec = 10", "ramp_per_sec = 0"));
        assert!(e.contains("ramp_per_sec must be > 0"), "{e}");
        let e = err(&SMOKE.replace("max_height = 180", "max_height = 180\nvideo = true"));
        assert!(
            e.contains("group 2 (attendee): role attendee may not publish"),
            "{e}"
        );
        let e = err(&SMOKE.replace("room = \"smoke\"", "room = \"a/b\""));
        assert!(e.contains("room \"a/b\""), "{e}");
        let e = err(&SMOKE.replace("count = 8", "count = 30000"));
        assert!(e.contains("at most 20000"), "{e}");
        let e = err("name = \"x\"\nroom = \"r\"\nduration_secs = 1\nramp_per_sec = 1\n");
        assert!(e.contains("at least one [[group]]"), "{e}");
    }

    #[test]
    fn missing_files_name_the_path() {
        let e = Scenario::load(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/x.toml"));
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap();
                assert!(!s.plan().unwrap().is_empty());
                seen += 1;
            }
        }
        assert!(seen >= 4);
    }
}
