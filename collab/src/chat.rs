//! Persistent chat: messages with threads, reactions, edits, deletions (the content goes, a
//! trace stays), mentions and read markers. A message's id is the sequence number of the
//! event that posted it, so ids are ordered and never reused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ting_protocol::collab::Author;

use crate::model::{Actor, CollabError, Ctx, Stored, check_text, parse_body};
use crate::search::SearchIndex;

pub const MAX_MESSAGE_CHARS: usize = 10_000;
const MAX_MENTIONS: usize = 50;
const MAX_REACTION_CHARS: usize = 16;
/// Distinct reactions on one message.
const MAX_REACTIONS: usize = 50;
/// Messages in a subscriber's snapshot; older ones come with `history` queries.
const SNAPSHOT_MESSAGES: usize = 50;
const MAX_PAGE: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatState {
    messages: BTreeMap<u64, Message>,
    #[serde(skip)]
    index: SearchIndex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    pub author: Author,
    pub at: i64,
    pub text: String,
    /// The thread's first message, for replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
    /// Emoji → identities that reacted with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replies: u32,
    /// A file from the file drop this message announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deletion {
    pub by: String,
    pub at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Post {
        text: String,
        #[serde(default)]
        thread: Option<u64>,
        #[serde(default)]
        mentions: Vec<String>,
    },
    Edit {
        id: u64,
        text: String,
    },
    Delete {
        id: u64,
    },
    React {
        id: u64,
        emoji: String,
        #[serde(default = "yes")]
        on: bool,
    },
}

fn yes() -> bool {
    true
}

/// Stored events (what `decide` returns).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Posted {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<Value>,
    },
    Edited {
        id: u64,
        text: String,
    },
    Deleted {
        id: u64,
    },
    Reacted {
        id: u64,
        emoji: String,
        on: bool,
    },
    /// Retention: messages posted before `before` (unix ms) are gone, without a trace.
    Expired {
        before: i64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case", deny_unknown_fields)]
enum Query {
    /// Messages before `before` (newest first in the log, returned oldest first); in one
    /// thread when `thread` is given.
    History {
        #[serde(default)]
        before: Option<u64>,
        #[serde(default = "page")]
        limit: usize,
        #[serde(default)]
        thread: Option<u64>,
    },
    /// Messages containing every word of `q` (the last one as a prefix), newest first.
    Search {
        q: String,
        #[serde(default = "page")]
        limit: usize,
    },
}

fn page() -> usize {
    50
}

/// The event a file-drop upload posts into the room's chat.
pub fn file_announcement(file: Value) -> Value {
    json!({"event": "posted", "text": "", "file": file})
}

impl ChatState {
    pub fn decide(&self, ctx: Ctx<'_>, command: Value) -> Result<Value, CollabError> {
        let event = match parse_body::<Command>(command)? {
            Command::Post {
                text,
                thread,
                mentions,
            } => {
                check_text("a message", &text, MAX_MESSAGE_CHARS)?;
                if text.trim().is_empty() {
                    return Err(CollabError::bad("a message needs text"));
                }
                if mentions.len() > MAX_MENTIONS || mentions.iter().any(|m| m.len() > 256) {
                    return Err(CollabError::too_large("too many or too long mentions"));
                }
                let thread = match thread {
                    Some(id) => {
                        let root = self.live(id)?;
                        // Replies to a reply join the root's thread (threads are one level).
                        Some(root.thread.unwrap_or(root.id))
                    }
                    None => None,
                };
                Event::Posted {
                    text,
                    thread,
                    mentions,
                    file: None,
                }
            }
            Command::Edit { id, text } => {
                check_text("a message", &text, MAX_MESSAGE_CHARS)?;
                let message = self.live(id)?;
                if message.author.identity != ctx.actor.identity {
                    return Err(CollabError::not_allowed("only its author edits a message"));
                }
                if text.trim().is_empty() {
                    return Err(CollabError::bad("delete a message instead of emptying it"));
                }
                Event::Edited { id, text }
            }
            Command::Delete { id } => {
                let message = self.live(id)?;
                if message.author.identity != ctx.actor.identity && !ctx.actor.moderator {
                    return Err(CollabError::not_allowed(
                        "only its author or a moderator deletes a message",
                    ));
                }
                Event::Deleted { id }
            }
            Command::React { id, emoji, on } => {
                let message = self.live(id)?;
                if on
                    && !message.reactions.contains_key(&emoji)
                    && message.reactions.len() >= MAX_REACTIONS
                {
                    return Err(CollabError::too_large(format!(
                        "a message holds at most {MAX_REACTIONS} different reactions"
                    )));
                }
                if emoji.is_empty() || emoji.chars().count() > MAX_REACTION_CHARS {
                    return Err(CollabError::bad("a reaction is 1-16 characters"));
                }
                Event::Reacted { id, emoji, on }
            }
        };
        serde_json::to_value(event).map_err(|e| CollabError::bad(e.to_string()))
    }

    fn live(&self, id: u64) -> Result<&Message, CollabError> {
        match self.messages.get(&id) {
            Some(m) if m.deleted.is_none() => Ok(m),
            Some(_) => Err(CollabError::not_found(format!("message {id} was deleted"))),
            None => Err(CollabError::not_found(format!("no message {id}"))),
        }
    }

    pub fn apply(&mut self, event: Stored<'_>) {
        let Ok(parsed) = serde_json::from_value::<Event>(event.body.clone()) else {
            return;
        };
        match parsed {
            Event::Posted {
                text,
                thread,
                mentions,
                file,
            } => {
                if let Some(root) = thread.and_then(|t| self.messages.get_mut(&t)) {
                    root.replies += 1;
                }
                self.index.add(event.seq, &text);
                if let Some(name) = file.as_ref().and_then(|f| f["name"].as_str()) {
                    self.index.add(event.seq, name);
                }
                self.messages.insert(
                    event.seq,
                    Message {
                        id: event.seq,
                        author: event.author.clone(),
                        at: event.at,
                        text,
                        thread,
                        mentions,
                        edited_at: None,
                        deleted: None,
                        reactions: BTreeMap::new(),
                        replies: 0,
                        file,
                    },
                );
            }
            Event::Edited { id, text } => {
                if let Some(m) = self.messages.get_mut(&id) {
                    self.index.remove(id, &m.text);
                    self.index.add(id, &text);
                    m.text = text;
                    m.edited_at = Some(event.at);
                }
            }
            Event::Deleted { id } => {
                if let Some(m) = self.messages.get_mut(&id) {
                    self.index.remove(id, &m.text);
                    m.text.clear();
                    m.mentions.clear();
                    m.reactions.clear();
                    m.file = None;
                    m.deleted = Some(Deletion {
                        by: event.author.identity.clone(),
                        at: event.at,
                    });
                }
            }
            Event::Expired { before } => {
                self.expire_before(before);
            }
            Event::Reacted { id, emoji, on } => {
                if let Some(m) = self.messages.get_mut(&id) {
                    let who = &event.author.identity;
                    if on {
                        m.reactions.entry(emoji).or_default().insert(who.clone());
                    } else if let Some(set) = m.reactions.get_mut(&emoji) {
                        set.remove(who);
                        if set.is_empty() {
                            m.reactions.remove(&emoji);
                        }
                    }
                }
            }
        }
    }

    /// Rebuilds what is not stored in snapshots (the search index).
    pub fn after_restore(&mut self) {
        let mut index = SearchIndex::default();
        for m in self.messages.values() {
            index.add(m.id, &m.text);
        }
        self.index = index;
    }

    /// The latest page; the service adds the reader's `read_up_to` (kept outside the log).
    pub fn client_snapshot(&self, _actor: &Actor) -> Value {
        let latest: Vec<&Message> = self
            .messages
            .values()
            .rev()
            .filter(|m| m.thread.is_none())
            .take(SNAPSHOT_MESSAGES)
            .collect();
        json!({
            "messages": latest.into_iter().rev().collect::<Vec<_>>(),
            "read_up_to": 0,
            "count": self.messages.len(),
        })
    }

    pub fn query(&self, _actor: &Actor, body: Value) -> Result<Value, CollabError> {
        match parse_body::<Query>(body)? {
            Query::History {
                before,
                limit,
                thread,
            } => {
                let limit = limit.clamp(1, MAX_PAGE);
                let upper = before.unwrap_or(u64::MAX);
                let mut page: Vec<&Message> = self
                    .messages
                    .range(..upper)
                    .rev()
                    .filter(|(_, m)| m.thread == thread || thread == Some(m.id))
                    .map(|(_, m)| m)
                    .take(limit + 1)
                    .collect();
                let more = page.len() > limit;
                page.truncate(limit);
                page.reverse();
                Ok(json!({"messages": page, "more": more}))
            }
            Query::Search { q, limit } => {
                check_text("a search", &q, 200)?;
                let limit = limit.clamp(1, MAX_PAGE);
                let hits: Vec<&Message> = self
                    .index
                    .search(&q)
                    .into_iter()
                    .rev()
                    .filter_map(|id| self.messages.get(&id))
                    .filter(|m| m.deleted.is_none())
                    .take(limit)
                    .collect();
                Ok(json!({"messages": hits}))
            }
        }
    }

    pub fn expiring_before(&self, cutoff_ms: i64) -> usize {
        self.messages.values().filter(|m| m.at < cutoff_ms).count()
    }

    /// Retention: messages posted before `cutoff_ms` go completely (no trace).
    fn expire_before(&mut self, cutoff_ms: i64) -> usize {
        let old: Vec<u64> = self
            .messages
            .values()
            .filter(|m| m.at < cutoff_ms)
            .map(|m| m.id)
            .collect();
        for id in &old {
            if let Some(m) = self.messages.remove(id) {
                self.index.remove(*id, &m.text);
            }
        }
        old.len()
    }

    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Access;

    fn actor(identity: &str, moderator: bool) -> Actor {
        Actor {
            room: "r".into(),
            identity: identity.into(),
            name: identity.to_uppercase(),
            moderator,
            access: Access::full(),
        }
    }

    /// Decides and applies as the service does, returning the new event's seq.
    fn write(
        chat: &mut ChatState,
        seq: &mut u64,
        who: &Actor,
        command: Value,
    ) -> Result<u64, CollabError> {
        *seq += 1;
        let ctx = Ctx {
            actor: who,
            now_ms: *seq as i64 * 1000,
            seq: *seq,
        };
        let body = chat.decide(ctx, command)?;
        chat.apply(Stored {
            seq: *seq,
            at: ctx.now_ms,
            author: &who.author(),
            body: &body,
        });
        Ok(*seq)
    }

    #[test]
    fn threads_edits_deletes_and_reactions() {
        let (ann, bob, moderator) = (actor("ann", false), actor("bob", false), actor("mo", true));
        let mut chat = ChatState::default();
        let mut seq = 0;
        let root = write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"post","text":"Agenda?"}),
        )
        .unwrap();
        let reply = write(
            &mut chat,
            &mut seq,
            &bob,
            json!({"op":"post","text":"Budget","thread":root}),
        )
        .unwrap();
        // A reply to a reply lands in the root's thread.
        let nested = write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"post","text":"ok","thread":reply}),
        )
        .unwrap();
        assert_eq!(chat.messages[&nested].thread, Some(root));
        assert_eq!(chat.messages[&root].replies, 2);

        // Only the author edits.
        let refused = write(
            &mut chat,
            &mut seq,
            &bob,
            json!({"op":"edit","id":root,"text":"x"}),
        );
        assert_eq!(
            refused.unwrap_err().code,
            ting_protocol::collab::CollabErrorCode::NotAllowed
        );
        write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"edit","id":root,"text":"Agenda for Monday?"}),
        )
        .unwrap();
        assert_eq!(chat.messages[&root].text, "Agenda for Monday?");
        assert!(chat.messages[&root].edited_at.is_some());

        write(
            &mut chat,
            &mut seq,
            &bob,
            json!({"op":"react","id":root,"emoji":"👍"}),
        )
        .unwrap();
        write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"react","id":root,"emoji":"👍"}),
        )
        .unwrap();
        write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"react","id":root,"emoji":"👍","on":false}),
        )
        .unwrap();
        assert_eq!(chat.messages[&root].reactions["👍"].len(), 1);

        // Bob may not delete Ann's message; a moderator may. Content goes, a trace stays.
        assert!(write(&mut chat, &mut seq, &bob, json!({"op":"delete","id":root})).is_err());
        write(
            &mut chat,
            &mut seq,
            &moderator,
            json!({"op":"delete","id":root}),
        )
        .unwrap();
        let gone = &chat.messages[&root];
        assert_eq!(gone.text, "");
        assert!(gone.reactions.is_empty());
        assert_eq!(gone.deleted.as_ref().map(|d| d.by.as_str()), Some("mo"));
        // A deleted message cannot be edited, reacted to or replied to.
        assert!(
            write(
                &mut chat,
                &mut seq,
                &ann,
                json!({"op":"edit","id":root,"text":"again"})
            )
            .is_err()
        );
        assert!(
            write(
                &mut chat,
                &mut seq,
                &ann,
                json!({"op":"post","text":"hi","thread":root})
            )
            .is_err()
        );
        // Search no longer finds its words; the thread's history still lists the trace.
        let found = chat
            .query(&ann, json!({"query":"search","q":"agenda"}))
            .unwrap();
        assert_eq!(found["messages"].as_array().map(Vec::len), Some(0));
        let thread = chat
            .query(&ann, json!({"query":"history","thread":root}))
            .unwrap();
        assert_eq!(thread["messages"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn history_pages_and_search() {
        let ann = actor("ann", false);
        let mut chat = ChatState::default();
        let mut seq = 0;
        for i in 0..120 {
            let text = if i % 10 == 0 {
                format!("release notes {i}")
            } else {
                format!("message {i}")
            };
            write(&mut chat, &mut seq, &ann, json!({"op":"post","text":text})).unwrap();
        }
        let first = chat
            .query(&ann, json!({"query":"history","limit":50}))
            .unwrap();
        let ids: Vec<u64> = first["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (71..=120).collect::<Vec<_>>());
        assert_eq!(first["more"], true);
        let second = chat
            .query(&ann, json!({"query":"history","before":71,"limit":100}))
            .unwrap();
        assert_eq!(second["messages"].as_array().unwrap().len(), 70);
        assert_eq!(second["more"], false);

        let hits = chat
            .query(&ann, json!({"query":"search","q":"Release NOT"}))
            .unwrap();
        let ids: Vec<u64> = hits["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![111, 101, 91, 81, 71, 61, 51, 41, 31, 21, 11, 1]);
        assert!(chat.query(&ann, json!({"query":"teleport"})).is_err());
    }

    #[test]
    fn bad_commands_are_refused() {
        let ann = actor("ann", false);
        let mut chat = ChatState::default();
        let mut seq = 0;
        for bad in [
            json!({"op":"post"}),
            json!({"op":"post","text":"   "}),
            json!({"op":"post","text":"x".repeat(MAX_MESSAGE_CHARS + 1)}),
            json!({"op":"post","text":"hi","thread":999}),
            json!({"op":"shout","text":"hi"}),
            json!({"op":"post","text":"hi","admin":true}),
            json!({"op":"react","id":1,"emoji":""}),
            json!([1, 2]),
        ] {
            assert!(
                write(&mut chat, &mut seq, &ann, bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(chat.messages.len(), 0);
    }

    #[test]
    fn retention_removes_old_messages_entirely() {
        let ann = actor("ann", false);
        let mut chat = ChatState::default();
        let mut seq = 0;
        for _ in 0..10 {
            write(
                &mut chat,
                &mut seq,
                &ann,
                json!({"op":"post","text":"old news"}),
            )
            .unwrap();
        }
        // Messages 1..=4 were posted at 1000..4000 ms.
        assert_eq!(chat.expire_before(5000), 4);
        assert_eq!(chat.messages.keys().next(), Some(&5));
        let hits = chat
            .query(&ann, json!({"query":"search","q":"old"}))
            .unwrap();
        assert_eq!(hits["messages"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        let ann = actor("ann", false);
        let mut chat = ChatState::default();
        let mut seq = 0;
        write(
            &mut chat,
            &mut seq,
            &ann,
            json!({"op":"post","text":"persist me"}),
        )
        .unwrap();
        let stored = serde_json::to_string(&chat).unwrap();
        let mut restored: ChatState = serde_json::from_str(&stored).unwrap();
        restored.after_restore();
        assert_eq!(restored.messages, chat.messages);
        let hits = restored
            .query(&ann, json!({"query":"search","q":"persist"}))
            .unwrap();
        assert_eq!(hits["messages"].as_array().unwrap().len(), 1);
    }
}
