//! The whiteboard: the server owns the scene. Elements merge one by one by version, as
//! Excalidraw reconciles: a higher `version` wins, and on a tie the lower `version_nonce`
//! wins, so every replica picks the same element whatever order changes arrive in. A deleted
//! element stays as a tombstone (`is_deleted`) so a late, older edit cannot bring it back.
//! Undo and redo are per author: they revert only that author's own changes, and only where
//! nobody has changed the element since.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{CollabError, Ctx, Stored, check_text, parse_body};

const MAX_ELEMENTS_PER_OP: usize = 1000;
const MAX_POINTS: usize = 5000;
const MAX_TEXT_CHARS: usize = 10_000;
const MAX_ELEMENTS: usize = 100_000;
const UNDO_DEPTH: usize = 100;
/// Versions stay below 2^53 (exact in JavaScript), so an element can always be changed again.
const MAX_VERSION: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementKind {
    Freedraw,
    Rectangle,
    Ellipse,
    Diamond,
    Line,
    Arrow,
    Text,
    Sticky,
    Image,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Element {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ElementKind,
    pub version: u64,
    pub version_nonce: u32,
    #[serde(default)]
    pub is_deleted: bool,
    #[serde(default)]
    pub x: f64,
    #[serde(default)]
    pub y: f64,
    #[serde(default)]
    pub width: f64,
    #[serde(default)]
    pub height: f64,
    #[serde(default)]
    pub angle: f64,
    /// Relative to (x, y): free-draw strokes, lines and arrows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<[f64; 2]>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default = "black")]
    pub stroke: String,
    #[serde(default = "transparent")]
    pub fill: String,
    #[serde(default = "one")]
    pub stroke_width: f64,
    /// An image's file in the room's file drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// Set by the server: who made this version.
    #[serde(default)]
    pub updated_by: String,
    /// Set by the server: the event that first created the element (drawing order).
    #[serde(default)]
    pub created_seq: u64,
}

fn black() -> String {
    "#1e1e1e".into()
}

fn transparent() -> String {
    "transparent".into()
}

fn one() -> f64 {
    1.0
}

/// Whether `incoming` replaces `current` (Excalidraw's rule).
pub fn wins(incoming: &Element, current: &Element) -> bool {
    incoming.version > current.version
        || (incoming.version == current.version && incoming.version_nonce < current.version_nonce)
}

fn is_colour(s: &str) -> bool {
    s == "transparent"
        || (s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Element {
    fn validate(&self) -> Result<(), CollabError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(CollabError::bad("element ids are 1-64 of A-Z a-z 0-9 - _"));
        }
        let numbers = [
            self.x,
            self.y,
            self.width,
            self.height,
            self.angle,
            self.stroke_width,
        ];
        let finite = numbers.iter().all(|n| n.is_finite() && n.abs() < 1e7)
            && self
                .points
                .iter()
                .all(|p| p.iter().all(|n| n.is_finite() && n.abs() < 1e7));
        if !finite {
            return Err(CollabError::bad(
                "coordinates must be finite and within ±1e7",
            ));
        }
        if self.points.len() > MAX_POINTS {
            return Err(CollabError::too_large(format!(
                "an element has at most {MAX_POINTS} points"
            )));
        }
        check_text("an element's text", &self.text, MAX_TEXT_CHARS)?;
        if !is_colour(&self.stroke) || !is_colour(&self.fill) {
            return Err(CollabError::bad("colours are #rrggbb or transparent"));
        }
        if self.version >= MAX_VERSION {
            return Err(CollabError::bad(
                "an element's version stays below 2^53 - 1",
            ));
        }
        if self.kind == ElementKind::Image && self.file_id.as_deref().is_none_or(str::is_empty) {
            return Err(CollabError::bad("an image names its file_id"));
        }
        Ok(())
    }
}

/// One author's change: each element before and after it.
#[derive(Debug, Clone, Default)]
struct Change {
    elements: Vec<(Option<Element>, Element)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WhiteboardState {
    elements: HashMap<String, Element>,
    #[serde(skip)]
    undo: HashMap<String, Vec<Change>>,
    #[serde(skip)]
    redo: HashMap<String, Vec<Change>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Upsert { elements: Vec<Element> },
    Undo {},
    Redo {},
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Origin {
    Edit,
    Undo,
    Redo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Upserted {
        origin: Origin,
        elements: Vec<Element>,
    },
}

/// A server-made nonce: spread, and the same on every replica.
fn nonce(seq: u64, id: &str) -> u32 {
    let mut h: u64 = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    (h >> 32) as u32
}

impl WhiteboardState {
    pub fn decide(&self, ctx: Ctx<'_>, command: Value) -> Result<Value, CollabError> {
        let event = match parse_body::<Command>(command)? {
            Command::Upsert { elements } => {
                if elements.len() > MAX_ELEMENTS_PER_OP {
                    return Err(CollabError::too_large(format!(
                        "at most {MAX_ELEMENTS_PER_OP} elements per op"
                    )));
                }
                let mut accepted: Vec<Element> = Vec::new();
                for mut element in elements {
                    element.validate()?;
                    let created_seq = match self.elements.get(&element.id) {
                        Some(current) if !wins(&element, current) => continue,
                        Some(current) => current.created_seq,
                        None if self.elements.len() >= MAX_ELEMENTS => {
                            return Err(CollabError::too_large(format!(
                                "a whiteboard holds at most {MAX_ELEMENTS} elements"
                            )));
                        }
                        None => ctx.seq,
                    };
                    element.created_seq = created_seq;
                    element.updated_by = ctx.actor.identity.clone();
                    // One op naming an element twice: the later copy is the one that counts.
                    accepted.retain(|e| e.id != element.id);
                    accepted.push(element);
                }
                Event::Upserted {
                    origin: Origin::Edit,
                    elements: accepted,
                }
            }
            Command::Undo {} => self.revert(ctx, Origin::Undo)?,
            Command::Redo {} => self.revert(ctx, Origin::Redo)?,
        };
        serde_json::to_value(event).map_err(|e| CollabError::bad(e.to_string()))
    }

    /// Reverts the author's last change (undo) or last undo (redo), element by element, where
    /// nobody else has changed the element since.
    fn revert(&self, ctx: Ctx<'_>, origin: Origin) -> Result<Event, CollabError> {
        let stack = match origin {
            Origin::Undo => &self.undo,
            _ => &self.redo,
        };
        let Some(change) = stack.get(&ctx.actor.identity).and_then(|s| s.last()) else {
            return Err(CollabError::not_found(match origin {
                Origin::Undo => "nothing of yours to undo",
                _ => "nothing of yours to redo",
            }));
        };
        let mut elements = Vec::new();
        for (before, after) in &change.elements {
            let Some(current) = self.elements.get(&after.id) else {
                continue;
            };
            if current.updated_by != ctx.actor.identity {
                continue; // somebody else changed it since: their change stays
            }
            let mut restored = match before {
                Some(before) => before.clone(),
                None => Element {
                    is_deleted: true,
                    ..after.clone()
                },
            };
            restored.version = current.version.saturating_add(1).min(MAX_VERSION);
            restored.version_nonce = nonce(ctx.seq, &restored.id);
            restored.updated_by = ctx.actor.identity.clone();
            restored.created_seq = current.created_seq;
            elements.push(restored);
        }
        Ok(Event::Upserted { origin, elements })
    }

    pub fn apply(&mut self, event: Stored<'_>) {
        let Ok(Event::Upserted { origin, elements }) =
            serde_json::from_value::<Event>(event.body.clone())
        else {
            return;
        };
        let mut change = Change::default();
        for element in elements {
            // Events were decided against this state; the check keeps replays idempotent.
            let before = self.elements.get(&element.id).cloned();
            if before.as_ref().is_some_and(|b| !wins(&element, b)) {
                continue;
            }
            change.elements.push((before, element.clone()));
            self.elements.insert(element.id.clone(), element);
        }
        let author = &event.author.identity;
        let push = |stacks: &mut HashMap<String, Vec<Change>>, change: Change| {
            let stack = stacks.entry(author.clone()).or_default();
            stack.push(change);
            if stack.len() > UNDO_DEPTH {
                stack.remove(0);
            }
        };
        match origin {
            Origin::Edit => {
                if !change.elements.is_empty() {
                    push(&mut self.undo, change);
                    self.redo.remove(author);
                }
            }
            Origin::Undo => {
                self.undo.get_mut(author).and_then(Vec::pop);
                push(&mut self.redo, change);
            }
            Origin::Redo => {
                self.redo.get_mut(author).and_then(Vec::pop);
                push(&mut self.undo, change);
            }
        }
    }

    pub fn client_snapshot(&self) -> Value {
        json!({ "elements": self.ordered() })
    }

    /// All elements, tombstones included, in drawing order.
    pub fn ordered(&self) -> Vec<&Element> {
        let mut all: Vec<&Element> = self.elements.values().collect();
        all.sort_by(|a, b| a.created_seq.cmp(&b.created_seq).then(a.id.cmp(&b.id)));
        all
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    pub fn element(&self, id: &str) -> Option<&Element> {
        self.elements.get(id)
    }

    /// Canonical form for comparing replicas.
    pub fn canonical(&self) -> BTreeMap<&str, &Element> {
        self.elements.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Actor};
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use ting_protocol::collab::Author;

    fn actor(identity: &str) -> Actor {
        Actor {
            room: "r".into(),
            identity: identity.into(),
            name: identity.into(),
            moderator: false,
            access: Access::full(),
        }
    }

    fn rect(id: &str, version: u64, nonce: u32, x: f64) -> Value {
        json!({"id": id, "type": "rectangle", "version": version, "version_nonce": nonce,
               "x": x, "y": 0.0, "width": 10.0, "height": 10.0})
    }

    struct Board {
        state: WhiteboardState,
        seq: u64,
    }

    impl Board {
        fn new() -> Self {
            Self {
                state: WhiteboardState::default(),
                seq: 0,
            }
        }

        fn write(&mut self, who: &Actor, command: Value) -> Result<Value, CollabError> {
            self.seq += 1;
            let ctx = Ctx {
                actor: who,
                now_ms: 0,
                seq: self.seq,
            };
            let body = self.state.decide(ctx, command)?;
            self.apply(&who.author(), &body);
            Ok(body)
        }

        fn apply(&mut self, author: &Author, body: &Value) {
            self.state.apply(Stored {
                seq: self.seq,
                at: 0,
                author,
                body,
            });
        }

        fn x(&self, id: &str) -> f64 {
            self.state.element(id).map(|e| e.x).unwrap_or(f64::NAN)
        }
    }

    #[test]
    fn higher_version_wins_and_ties_go_to_the_lower_nonce() {
        let ann = actor("ann");
        let mut board = Board::new();
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 1, 50, 0.0)]}),
            )
            .unwrap();
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 3, 50, 3.0)]}),
            )
            .unwrap();
        // An older version arriving late is ignored.
        let late = board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 2, 1, 2.0)]}),
            )
            .unwrap();
        assert_eq!(late["elements"].as_array().map(Vec::len), Some(0));
        assert_eq!(board.x("a"), 3.0);
        // Same version: the lower nonce wins, the higher loses.
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 3, 60, 9.0)]}),
            )
            .unwrap();
        assert_eq!(board.x("a"), 3.0);
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 3, 10, 4.0)]}),
            )
            .unwrap();
        assert_eq!(board.x("a"), 4.0);
    }

    /// Clients that apply the same set of element versions in any order end with one scene.
    #[test]
    fn concurrent_edits_converge_in_any_delivery_order() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..50 {
            let mut edits: Vec<Element> = Vec::new();
            for i in 0..40 {
                let id = format!("e{}", rng.random_range(0..5));
                // Versions collide often; a nonce is unique per edit, as random nonces are.
                let nonce = rng.random_range(0..4) * 1000 + i;
                let mut e: Element =
                    serde_json::from_value(rect(&id, rng.random_range(1..5), nonce, i as f64))
                        .unwrap();
                e.is_deleted = rng.random_bool(0.2);
                edits.push(e);
            }
            let mut replicas = Vec::new();
            for _ in 0..4 {
                let mut order = edits.clone();
                order.shuffle(&mut rng);
                let mut scene: HashMap<String, Element> = HashMap::new();
                for e in order {
                    match scene.get(&e.id) {
                        Some(current) if !wins(&e, current) => {}
                        _ => {
                            scene.insert(e.id.clone(), e);
                        }
                    }
                }
                let mut canonical: Vec<(String, u64, u32, f64, bool)> = scene
                    .values()
                    .map(|e| (e.id.clone(), e.version, e.version_nonce, e.x, e.is_deleted))
                    .collect();
                canonical.sort_by(|a, b| a.0.cmp(&b.0));
                replicas.push(canonical);
            }
            assert!(replicas.windows(2).all(|w| w[0] == w[1]), "{replicas:?}");
        }
    }

    #[test]
    fn the_servers_scene_is_the_same_whatever_order_writes_arrive_in() {
        let (ann, bob) = (actor("ann"), actor("bob"));
        let writes = vec![
            (ann.clone(), rect("a", 2, 7, 1.0)),
            (bob.clone(), rect("a", 2, 3, 2.0)),
            (bob.clone(), rect("b", 1, 3, 5.0)),
            (
                ann.clone(),
                json!({"id":"b","type":"rectangle","version":2,"version_nonce":9,"is_deleted":true}),
            ),
            (ann.clone(), rect("a", 1, 0, 9.0)),
        ];
        let mut scenes = Vec::new();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let mut order = writes.clone();
            order.shuffle(&mut rng);
            let mut board = Board::new();
            for (who, element) in order {
                board
                    .write(&who, json!({"op":"upsert","elements":[element]}))
                    .unwrap();
            }
            let scene: Vec<(String, u64, u32, f64, bool)> = board
                .state
                .canonical()
                .values()
                .map(|e| (e.id.clone(), e.version, e.version_nonce, e.x, e.is_deleted))
                .collect();
            scenes.push(scene);
        }
        assert!(scenes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(
            scenes[0][0].3, 2.0,
            "tie on version 2: nonce 3 beats nonce 7"
        );
        assert!(scenes[0][1].4, "b stays deleted (a tombstone)");
    }

    #[test]
    fn undo_and_redo_touch_only_your_own_changes() {
        let (ann, bob) = (actor("ann"), actor("bob"));
        let mut board = Board::new();
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 1, 1, 0.0)]}),
            )
            .unwrap();
        board
            .write(
                &bob,
                json!({"op":"upsert","elements":[rect("b", 1, 1, 0.0)]}),
            )
            .unwrap();
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("a", 2, 1, 5.0)]}),
            )
            .unwrap();
        // Ann's undo moves her rectangle back; Bob's stays.
        board.write(&ann, json!({"op":"undo"})).unwrap();
        assert_eq!(board.x("a"), 0.0);
        assert_eq!(board.x("b"), 0.0);
        assert!(!board.state.element("b").unwrap().is_deleted);
        board.write(&ann, json!({"op":"redo"})).unwrap();
        assert_eq!(board.x("a"), 5.0);
        // Undoing the creation deletes (tombstones) it.
        board.write(&ann, json!({"op":"undo"})).unwrap();
        board.write(&ann, json!({"op":"undo"})).unwrap();
        assert!(board.state.element("a").unwrap().is_deleted);
        assert!(
            board.write(&ann, json!({"op":"undo"})).is_err(),
            "nothing left to undo"
        );
        // Bob moved his element after... Ann's undo never reverts an element Bob changed since.
        let mut board = Board::new();
        board
            .write(
                &ann,
                json!({"op":"upsert","elements":[rect("s", 1, 1, 0.0)]}),
            )
            .unwrap();
        board
            .write(
                &bob,
                json!({"op":"upsert","elements":[rect("s", 2, 1, 7.0)]}),
            )
            .unwrap();
        let undone = board.write(&ann, json!({"op":"undo"})).unwrap();
        assert_eq!(undone["elements"].as_array().map(Vec::len), Some(0));
        assert_eq!(board.x("s"), 7.0);
    }

    #[test]
    fn bad_elements_are_refused() {
        let ann = actor("ann");
        let mut board = Board::new();
        for bad in [
            json!({"id":"a b","type":"rectangle","version":1,"version_nonce":1}),
            json!({"id":"a","type":"hologram","version":1,"version_nonce":1}),
            json!({"id":"a","type":"rectangle","version":1,"version_nonce":1,"x":1e12}),
            json!({"id":"a","type":"rectangle","version":1,"version_nonce":1,"stroke":"red\" onload=\"x"}),
            json!({"id":"a","type":"image","version":1,"version_nonce":1}),
            json!({"id":"a","type":"rectangle","version":1,"version_nonce":1,"script":"x"}),
            json!({"id":"a","type":"rectangle","version":u64::MAX,"version_nonce":1}),
        ] {
            assert!(
                board
                    .write(&ann, json!({"op":"upsert","elements":[bad.clone()]}))
                    .is_err(),
                "{bad}"
            );
        }
        assert!(board.state.is_empty());
    }
}
