//! Kanban boards: columns and cards ordered by fractional positions (a move rewrites only the
//! moved card's position), with labels, assignees, due dates, checklists, comments, file
//! attachments and links to a meeting and a chat thread. The server orders all writes, so two
//! people moving the same card at once end with the same board: the later move wins.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ting_protocol::collab::Author;

use crate::fractional;
use crate::model::{CollabError, Ctx, Stored, check_text, parse_body};

const MAX_TITLE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 20_000;
const MAX_CARDS: usize = 20_000;
const MAX_COLUMNS: usize = 100;
const MAX_LIST: usize = 100;
const MAX_LABELS: usize = 100;
const MAX_COMMENTS: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardState {
    pub title: String,
    pub columns: BTreeMap<String, Column>,
    pub cards: BTreeMap<String, Card>,
    pub labels: BTreeMap<String, Label>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub id: String,
    pub title: String,
    pub position: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub id: String,
    pub name: String,
    pub color: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Card {
    pub id: String,
    pub column: String,
    pub position: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: BTreeSet<String>,
    #[serde(default)]
    pub assignees: BTreeSet<String>,
    /// A date, `YYYY-MM-DD`.
    #[serde(default)]
    pub due: Option<String>,
    #[serde(default)]
    pub checklist: Vec<ChecklistItem>,
    #[serde(default)]
    pub comments: Vec<Comment>,
    /// File ids from the room's file drop.
    #[serde(default)]
    pub attachments: Vec<String>,
    /// A meeting (room id) this card is about.
    #[serde(default)]
    pub meeting: Option<String>,
    /// A chat message (thread root) this card is discussed in.
    #[serde(default)]
    pub thread: Option<u64>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChecklistItem {
    pub id: String,
    pub text: String,
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: u64,
    pub author: Author,
    pub at: i64,
    pub text: String,
}

/// Where to put a column or card: after one sibling and/or before another (both ids); none
/// means at the end.
#[derive(Debug, Default)]
struct Place {
    after: Option<String>,
    before: Option<String>,
}

/// Card fields a client may set; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assignees: Option<BTreeSet<String>>,
    /// `""` clears the due date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checklist: Option<Vec<ChecklistItem>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attachments: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meeting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    SetTitle {
        title: String,
    },
    AddColumn {
        #[serde(default)]
        id: Option<String>,
        title: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        before: Option<String>,
    },
    RenameColumn {
        id: String,
        title: String,
    },
    MoveColumn {
        id: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        before: Option<String>,
    },
    /// Only an empty column can go (cards are moved or deleted first).
    DeleteColumn {
        id: String,
    },
    SetLabel {
        id: String,
        name: String,
        color: String,
    },
    AddCard {
        #[serde(default)]
        id: Option<String>,
        column: String,
        title: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        before: Option<String>,
    },
    UpdateCard {
        id: String,
        patch: CardPatch,
    },
    MoveCard {
        id: String,
        column: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        before: Option<String>,
    },
    DeleteCard {
        id: String,
    },
    Comment {
        card: String,
        text: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    TitleSet {
        title: String,
    },
    ColumnAdded {
        column: Column,
    },
    ColumnRenamed {
        id: String,
        title: String,
    },
    ColumnMoved {
        id: String,
        position: String,
    },
    ColumnDeleted {
        id: String,
    },
    LabelSet {
        label: Label,
    },
    CardAdded {
        card: Card,
    },
    CardUpdated {
        id: String,
        patch: CardPatch,
    },
    CardMoved {
        id: String,
        column: String,
        position: String,
    },
    CardDeleted {
        id: String,
    },
    Commented {
        card: String,
        text: String,
    },
}

fn check_id(id: &str) -> Result<(), CollabError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CollabError::bad("ids are 1-64 of A-Z a-z 0-9 - _"))
    }
}

fn check_date(date: &str) -> Result<(), CollabError> {
    let b = date.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if ok || date.is_empty() {
        Ok(())
    } else {
        Err(CollabError::bad("due dates are YYYY-MM-DD"))
    }
}

impl CardPatch {
    fn validate(&self) -> Result<(), CollabError> {
        if let Some(t) = &self.title {
            check_text("a title", t, MAX_TITLE_CHARS)?;
        }
        if let Some(d) = &self.description {
            check_text("a description", d, MAX_DESCRIPTION_CHARS)?;
        }
        if let Some(due) = &self.due {
            check_date(due)?;
        }
        let lists = [
            self.labels.as_ref().map(BTreeSet::len),
            self.assignees.as_ref().map(BTreeSet::len),
            self.checklist.as_ref().map(Vec::len),
            self.attachments.as_ref().map(Vec::len),
        ];
        if lists.iter().flatten().any(|&n| n > MAX_LIST) {
            return Err(CollabError::too_large(format!(
                "labels, assignees, checklists and attachments hold at most {MAX_LIST} items"
            )));
        }
        for item in self.checklist.iter().flatten() {
            check_text("a checklist item", &item.text, MAX_TITLE_CHARS)?;
        }
        let strings = self
            .assignees
            .iter()
            .flatten()
            .chain(self.attachments.iter().flatten());
        if strings
            .chain(self.labels.iter().flatten())
            .any(|s| s.len() > 256)
        {
            return Err(CollabError::too_large("names are at most 256 bytes"));
        }
        if self.meeting.as_ref().is_some_and(|m| m.len() > 128) {
            return Err(CollabError::too_large("a meeting id is at most 128 bytes"));
        }
        Ok(())
    }
}

impl BoardState {
    /// Cards of a column in order.
    pub fn column_cards(&self, column: &str) -> Vec<&Card> {
        let mut cards: Vec<&Card> = self.cards.values().filter(|c| c.column == column).collect();
        cards.sort_by(|a, b| a.position.cmp(&b.position).then(a.id.cmp(&b.id)));
        cards
    }

    pub fn ordered_columns(&self) -> Vec<&Column> {
        let mut columns: Vec<&Column> = self.columns.values().collect();
        columns.sort_by(|a, b| a.position.cmp(&b.position).then(a.id.cmp(&b.id)));
        columns
    }

    /// A position among `siblings` (id, position in order; the moved item excluded).
    fn place(siblings: &[(&str, &str)], place: &Place) -> Result<String, CollabError> {
        let index_of = |id: &str| {
            siblings
                .iter()
                .position(|(s, _)| *s == id)
                .ok_or_else(|| CollabError::not_found(format!("no '{id}' to place next to")))
        };
        let slot = match (&place.after, &place.before) {
            (Some(after), _) => index_of(after)? + 1,
            (None, Some(before)) => index_of(before)?,
            (None, None) => siblings.len(),
        };
        let low = slot.checked_sub(1).map(|i| siblings[i].1);
        let high = siblings.get(slot).map(|s| s.1);
        // Equal neighbours (never made by this server) fall back to the end.
        if let (Some(l), Some(h)) = (low, high)
            && l >= h
        {
            let last = siblings.last().map(|s| s.1);
            return Ok(fractional::between(last, None));
        }
        Ok(fractional::between(low, high))
    }

    fn card(&self, id: &str) -> Result<&Card, CollabError> {
        self.cards
            .get(id)
            .ok_or_else(|| CollabError::not_found(format!("no card '{id}'")))
    }

    fn column(&self, id: &str) -> Result<&Column, CollabError> {
        self.columns
            .get(id)
            .ok_or_else(|| CollabError::not_found(format!("no column '{id}'")))
    }

    fn new_id(
        &self,
        given: Option<String>,
        ctx: &Ctx<'_>,
        prefix: &str,
    ) -> Result<String, CollabError> {
        let id = given.unwrap_or_else(|| format!("{prefix}{}", ctx.seq));
        check_id(&id)?;
        if self.cards.contains_key(&id) || self.columns.contains_key(&id) {
            return Err(CollabError::bad(format!("'{id}' exists already")));
        }
        Ok(id)
    }

    fn card_siblings(&self, column: &str, except: &str) -> Vec<(&str, &str)> {
        self.column_cards(column)
            .into_iter()
            .filter(|c| c.id != except)
            .map(|c| (c.id.as_str(), c.position.as_str()))
            .collect()
    }

    fn column_siblings(&self, except: &str) -> Vec<(&str, &str)> {
        self.ordered_columns()
            .into_iter()
            .filter(|c| c.id != except)
            .map(|c| (c.id.as_str(), c.position.as_str()))
            .collect()
    }

    pub fn decide(&self, ctx: Ctx<'_>, command: Value) -> Result<Value, CollabError> {
        let event = match parse_body::<Command>(command)? {
            Command::SetTitle { title } => {
                check_text("a title", &title, MAX_TITLE_CHARS)?;
                Event::TitleSet { title }
            }
            Command::AddColumn {
                id,
                title,
                after,
                before,
            } => {
                let place = Place { after, before };
                check_text("a title", &title, MAX_TITLE_CHARS)?;
                if self.columns.len() >= MAX_COLUMNS {
                    return Err(CollabError::too_large(format!(
                        "at most {MAX_COLUMNS} columns"
                    )));
                }
                let id = self.new_id(id, &ctx, "col")?;
                let position = Self::place(&self.column_siblings(""), &place)?;
                Event::ColumnAdded {
                    column: Column {
                        id,
                        title,
                        position,
                    },
                }
            }
            Command::RenameColumn { id, title } => {
                check_text("a title", &title, MAX_TITLE_CHARS)?;
                self.column(&id)?;
                Event::ColumnRenamed { id, title }
            }
            Command::MoveColumn { id, after, before } => {
                let place = Place { after, before };
                self.column(&id)?;
                let position = Self::place(&self.column_siblings(&id), &place)?;
                Event::ColumnMoved { id, position }
            }
            Command::DeleteColumn { id } => {
                self.column(&id)?;
                if self.cards.values().any(|c| c.column == id) {
                    return Err(CollabError::bad("move or delete the column's cards first"));
                }
                Event::ColumnDeleted { id }
            }
            Command::SetLabel { id, name, color } => {
                check_id(&id)?;
                if !self.labels.contains_key(&id) && self.labels.len() >= MAX_LABELS {
                    return Err(CollabError::too_large(format!(
                        "at most {MAX_LABELS} labels"
                    )));
                }
                check_text("a label", &name, 100)?;
                if !(color.len() == 7 && color.starts_with('#')) {
                    return Err(CollabError::bad("label colours are #rrggbb"));
                }
                Event::LabelSet {
                    label: Label { id, name, color },
                }
            }
            Command::AddCard {
                id,
                column,
                title,
                after,
                before,
            } => {
                let place = Place { after, before };
                check_text("a title", &title, MAX_TITLE_CHARS)?;
                self.column(&column)?;
                if self.cards.len() >= MAX_CARDS {
                    return Err(CollabError::too_large(format!("at most {MAX_CARDS} cards")));
                }
                let id = self.new_id(id, &ctx, "card")?;
                let position = Self::place(&self.card_siblings(&column, ""), &place)?;
                Event::CardAdded {
                    card: Card {
                        id,
                        column,
                        position,
                        title,
                        created_by: ctx.actor.identity.clone(),
                        ..Card::default()
                    },
                }
            }
            Command::UpdateCard { id, patch } => {
                self.card(&id)?;
                patch.validate()?;
                Event::CardUpdated { id, patch }
            }
            Command::MoveCard {
                id,
                column,
                after,
                before,
            } => {
                let place = Place { after, before };
                self.card(&id)?;
                self.column(&column)?;
                let position = Self::place(&self.card_siblings(&column, &id), &place)?;
                Event::CardMoved {
                    id,
                    column,
                    position,
                }
            }
            Command::DeleteCard { id } => {
                self.card(&id)?;
                Event::CardDeleted { id }
            }
            Command::Comment { card, text } => {
                if self.card(&card)?.comments.len() >= MAX_COMMENTS {
                    return Err(CollabError::too_large(format!(
                        "a card holds at most {MAX_COMMENTS} comments"
                    )));
                }
                check_text("a comment", &text, MAX_DESCRIPTION_CHARS)?;
                if text.trim().is_empty() {
                    return Err(CollabError::bad("a comment needs text"));
                }
                Event::Commented { card, text }
            }
        };
        serde_json::to_value(event).map_err(|e| CollabError::bad(e.to_string()))
    }

    pub fn apply(&mut self, event: Stored<'_>) {
        let Ok(parsed) = serde_json::from_value::<Event>(event.body.clone()) else {
            return;
        };
        match parsed {
            Event::TitleSet { title } => self.title = title,
            Event::ColumnAdded { column } => {
                self.columns.insert(column.id.clone(), column);
            }
            Event::ColumnRenamed { id, title } => {
                if let Some(c) = self.columns.get_mut(&id) {
                    c.title = title;
                }
            }
            Event::ColumnMoved { id, position } => {
                if let Some(c) = self.columns.get_mut(&id) {
                    c.position = position;
                }
            }
            Event::ColumnDeleted { id } => {
                self.columns.remove(&id);
            }
            Event::LabelSet { label } => {
                self.labels.insert(label.id.clone(), label);
            }
            Event::CardAdded { card } => {
                self.cards.insert(card.id.clone(), card);
            }
            Event::CardUpdated { id, patch } => {
                if let Some(card) = self.cards.get_mut(&id) {
                    apply_patch(card, patch);
                }
            }
            Event::CardMoved {
                id,
                column,
                position,
            } => {
                if let Some(card) = self.cards.get_mut(&id) {
                    card.column = column;
                    card.position = position;
                }
            }
            Event::CardDeleted { id } => {
                self.cards.remove(&id);
            }
            Event::Commented { card, text } => {
                if let Some(card) = self.cards.get_mut(&card) {
                    card.comments.push(Comment {
                        id: event.seq,
                        author: event.author.clone(),
                        at: event.at,
                        text,
                    });
                }
            }
        }
    }
}

fn apply_patch(card: &mut Card, patch: CardPatch) {
    if let Some(v) = patch.title {
        card.title = v;
    }
    if let Some(v) = patch.description {
        card.description = v;
    }
    if let Some(v) = patch.labels {
        card.labels = v;
    }
    if let Some(v) = patch.assignees {
        card.assignees = v;
    }
    if let Some(v) = patch.due {
        card.due = (!v.is_empty()).then_some(v);
    }
    if let Some(v) = patch.checklist {
        card.checklist = v;
    }
    if let Some(v) = patch.attachments {
        card.attachments = v;
    }
    if let Some(v) = patch.meeting {
        card.meeting = (!v.is_empty()).then_some(v);
    }
    if let Some(v) = patch.thread {
        card.thread = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Actor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn ann() -> Actor {
        Actor {
            room: "r".into(),
            identity: "ann".into(),
            name: "Ann".into(),
            moderator: false,
            access: Access::full(),
        }
    }

    fn write(board: &mut BoardState, seq: &mut u64, command: Value) -> Result<Value, CollabError> {
        let who = ann();
        *seq += 1;
        let body = board.decide(
            Ctx {
                actor: &who,
                now_ms: 0,
                seq: *seq,
            },
            command,
        )?;
        board.apply(Stored {
            seq: *seq,
            at: 0,
            author: &who.author(),
            body: &body,
        });
        Ok(body)
    }

    fn order(board: &BoardState, column: &str) -> Vec<String> {
        board
            .column_cards(column)
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }

    #[test]
    fn a_thousand_random_moves_never_renumber_and_land_where_asked() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut board = BoardState::default();
        let mut seq = 0;
        for col in ["todo", "doing", "done"] {
            write(
                &mut board,
                &mut seq,
                json!({"op":"add_column","id":col,"title":col}),
            )
            .unwrap();
        }
        for i in 0..30 {
            write(
                &mut board,
                &mut seq,
                json!({"op":"add_card","id":format!("c{i}"),"column":"todo","title":"t"}),
            )
            .unwrap();
        }
        let columns = ["todo", "doing", "done"];
        for _ in 0..1000 {
            let card = format!("c{}", rng.random_range(0..30));
            let column = columns[rng.random_range(0..3)];
            let mut target: Vec<String> = order(&board, column)
                .into_iter()
                .filter(|c| *c != card)
                .collect();
            let slot = rng.random_range(0..=target.len());
            let command = if slot == 0 {
                match target.first() {
                    Some(first) => {
                        json!({"op":"move_card","id":card,"column":column,"before":first})
                    }
                    None => json!({"op":"move_card","id":card,"column":column}),
                }
            } else {
                json!({"op":"move_card","id":card,"column":column,"after":target[slot - 1]})
            };
            let before: BTreeMap<String, String> = board
                .cards
                .iter()
                .map(|(k, c)| (k.clone(), c.position.clone()))
                .collect();
            write(&mut board, &mut seq, command).unwrap();
            // Only the moved card's position changed.
            for (id, position) in &before {
                if *id != card {
                    assert_eq!(&board.cards[id].position, position, "{id} was renumbered");
                }
            }
            target.insert(slot, card.clone());
            assert_eq!(order(&board, column), target);
            assert!(fractional::is_valid(&board.cards[&card].position));
        }
    }

    #[test]
    fn concurrent_moves_of_one_card_converge() {
        // Two clients move the same card at once; the server orders the two moves, every
        // replica applies the two events in that order and ends on the later move.
        let mut server = BoardState::default();
        let mut seq = 0;
        write(
            &mut server,
            &mut seq,
            json!({"op":"add_column","id":"a","title":"A"}),
        )
        .unwrap();
        write(
            &mut server,
            &mut seq,
            json!({"op":"add_column","id":"b","title":"B"}),
        )
        .unwrap();
        write(
            &mut server,
            &mut seq,
            json!({"op":"add_card","id":"x","column":"a","title":"X"}),
        )
        .unwrap();
        write(
            &mut server,
            &mut seq,
            json!({"op":"add_card","id":"y","column":"a","title":"Y"}),
        )
        .unwrap();
        let replica_start = server.clone();
        let first = write(
            &mut server,
            &mut seq,
            json!({"op":"move_card","id":"x","column":"b"}),
        )
        .unwrap();
        let second = write(
            &mut server,
            &mut seq,
            json!({"op":"move_card","id":"x","column":"a","after":"y"}),
        )
        .unwrap();
        let mut replica = replica_start;
        let who = ann().author();
        replica.apply(Stored {
            seq: 5,
            at: 0,
            author: &who,
            body: &first,
        });
        replica.apply(Stored {
            seq: 6,
            at: 0,
            author: &who,
            body: &second,
        });
        assert_eq!(replica, server);
        assert_eq!(order(&server, "a"), vec!["y", "x"]);
    }

    #[test]
    fn cards_carry_details_comments_and_links() {
        let mut board = BoardState::default();
        let mut seq = 0;
        write(
            &mut board,
            &mut seq,
            json!({"op":"add_column","id":"todo","title":"To do"}),
        )
        .unwrap();
        write(
            &mut board,
            &mut seq,
            json!({"op":"set_label","id":"urgent","name":"Urgent","color":"#ff0000"}),
        )
        .unwrap();
        write(
            &mut board,
            &mut seq,
            json!({"op":"add_card","id":"c","column":"todo","title":"Budget"}),
        )
        .unwrap();
        write(
            &mut board,
            &mut seq,
            json!({"op":"update_card","id":"c","patch":{
            "labels":["urgent"],"assignees":["bob"],"due":"2026-12-01",
            "checklist":[{"id":"1","text":"draft","done":true}],
            "attachments":["f-1"],"meeting":"weekly","thread":12}}),
        )
        .unwrap();
        write(
            &mut board,
            &mut seq,
            json!({"op":"comment","card":"c","text":"see thread"}),
        )
        .unwrap();
        let card = &board.cards["c"];
        assert_eq!(card.due.as_deref(), Some("2026-12-01"));
        assert_eq!(card.thread, Some(12));
        assert_eq!(card.comments[0].author.identity, "ann");
        write(
            &mut board,
            &mut seq,
            json!({"op":"update_card","id":"c","patch":{"due":""}}),
        )
        .unwrap();
        assert_eq!(board.cards["c"].due, None);
        // A column with cards cannot go; bad input is refused.
        assert!(
            write(
                &mut board,
                &mut seq,
                json!({"op":"delete_column","id":"todo"})
            )
            .is_err()
        );
        for bad in [
            json!({"op":"update_card","id":"c","patch":{"due":"tomorrow"}}),
            json!({"op":"update_card","id":"c","patch":{"owner":"me"}}),
            json!({"op":"move_card","id":"c","column":"nowhere"}),
            json!({"op":"move_card","id":"c","column":"todo","after":"ghost"}),
            json!({"op":"add_card","id":"c","column":"todo","title":"dup"}),
            json!({"op":"add_card","id":"../x","column":"todo","title":"path"}),
        ] {
            assert!(write(&mut board, &mut seq, bad.clone()).is_err(), "{bad}");
        }
    }
}
