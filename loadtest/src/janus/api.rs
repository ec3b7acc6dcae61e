//! The Janus API messages the load tester sends and reads: pure builders and lenient parsers,
//! no socket. The shapes follow Janus 1.x (the JSON API over WebSockets and the multistream
//! VideoRoom plugin); fields this client does not use are ignored, so newer servers still parse.

use serde::Deserialize;
use serde_json::{Value, json};

pub const VIDEOROOM: &str = "janus.plugin.videoroom";
/// The VideoRoom's "room already exists" error: another participant created it first.
pub const ROOM_EXISTS: u64 = 427;

/// A Janus API request (`create`, `attach`, `keepalive`, …) without session or handle.
pub fn create_session(transaction: &str) -> Value {
    json!({ "janus": "create", "transaction": transaction })
}

pub fn attach(session: u64, transaction: &str) -> Value {
    json!({
        "janus": "attach",
        "session_id": session,
        "plugin": VIDEOROOM,
        "transaction": transaction,
    })
}

pub fn keepalive(session: u64, transaction: &str) -> Value {
    json!({ "janus": "keepalive", "session_id": session, "transaction": transaction })
}

/// Ends the session and every handle in it (hangs up both peer connections).
pub fn destroy(session: u64, transaction: &str) -> Value {
    json!({ "janus": "destroy", "session_id": session, "transaction": transaction })
}

/// A plugin request on a handle, with an SDP when there is one.
pub fn message(
    session: u64,
    handle: u64,
    transaction: &str,
    body: Value,
    jsep: Option<Value>,
) -> Value {
    let mut m = json!({
        "janus": "message",
        "session_id": session,
        "handle_id": handle,
        "transaction": transaction,
        "body": body,
    });
    if let Some(jsep) = jsep {
        m["jsep"] = jsep;
    }
    m
}

/// A room like the load tester's Ting rooms: any number of publishers, Opus and VP8, no
/// recording, the audio-level extension (as Ting's loudest-N needs it), not saved to the
/// configuration file.
pub fn create_room(room: u64, max_publishers: u32) -> Value {
    json!({
        "request": "create",
        "room": room,
        "permanent": false,
        "publishers": max_publishers,
        "audiocodec": "opus",
        "videocodec": "vp8",
        "record": false,
        "audiolevel_ext": true,
        "notify_joining": false,
    })
}

/// Joins as a participant with a chosen feed id: every participant joins this way, because
/// only a joined participant hears about publishers; it publishes only if it configures media.
pub fn join_publisher(room: u64, feed: u64, display: &str) -> Value {
    json!({
        "request": "join",
        "ptype": "publisher",
        "room": room,
        "id": feed,
        "display": display,
    })
}

/// Publishes the offer's streams. str0m lists the simulcast rids low to high (q;h;f), Janus
/// assumes high to low unless told. `trickle: false`: every candidate is in the SDP (str0m does
/// not trickle), so Janus expects no `trickle` messages.
pub fn publish(offer_sdp: &str) -> (Value, Value) {
    (
        json!({ "request": "configure" }),
        json!({ "type": "offer", "sdp": offer_sdp, "rid_order": "lmh", "trickle": false }),
    )
}

/// One subscription entry per feed: all its streams, the simulcast substream picked like Ting
/// picks a layer for the tile height.
fn streams(feeds: &[u64], substream: u8) -> Value {
    feeds
        .iter()
        .map(|feed| json!({ "feed": feed, "substream": substream }))
        .collect()
}

/// Opens the subscriber handle's subscription; Janus answers `attached` with an SDP offer.
pub fn join_subscriber(room: u64, private_id: Option<u64>, feeds: &[u64], substream: u8) -> Value {
    let mut body = json!({
        "request": "join",
        "ptype": "subscriber",
        "room": room,
        "streams": streams(feeds, substream),
    });
    if let Some(id) = private_id {
        body["private_id"] = json!(id);
    }
    body
}

/// Adds feeds to the subscription; Janus answers `updated` with a new SDP offer.
pub fn subscribe(feeds: &[u64], substream: u8) -> Value {
    json!({ "request": "subscribe", "streams": streams(feeds, substream) })
}

/// Answers the subscriber handle's offer (first or renegotiated).
pub fn start(answer_sdp: &str) -> (Value, Value) {
    (
        json!({ "request": "start" }),
        json!({ "type": "answer", "sdp": answer_sdp, "trickle": false }),
    )
}

/// The simulcast substream (0 = lowest) for a tile `max_height` pixels tall: the smallest layer
/// that covers it, else the top one — the rule of Ting's layer selection.
pub fn substream_for(max_height: u32, layer_heights: &[u16]) -> u8 {
    let top = layer_heights.len().saturating_sub(1);
    let pos = layer_heights
        .iter()
        .position(|&h| u32::from(h) >= max_height)
        .unwrap_or(top);
    u8::try_from(pos).unwrap_or(u8::MAX)
}

/// Anything Janus sends over the socket.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct JanusMessage {
    /// `success`, `error`, `ack`, `event`, `webrtcup`, `media`, `hangup`, `timeout`, …
    pub janus: String,
    #[serde(default)]
    pub transaction: Option<String>,
    #[serde(default)]
    pub session_id: Option<u64>,
    /// The handle an event is about.
    #[serde(default)]
    pub sender: Option<u64>,
    /// `create` and `attach` replies: the new session's or handle's id.
    #[serde(default)]
    pub data: Option<IdData>,
    #[serde(default)]
    pub plugindata: Option<PluginData>,
    #[serde(default)]
    pub jsep: Option<Jsep>,
    #[serde(default)]
    pub error: Option<JanusError>,
    /// `hangup`: why.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IdData {
    pub id: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct JanusError {
    pub code: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jsep {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PluginData {
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub data: VideoRoomData,
}

/// A VideoRoom reply or event. One event may carry several things at once (a `configured`
/// with the publishers list, say), so this is a bag of optional fields, not an enum.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct VideoRoomData {
    /// `created`, `joined`, `event`, `attached`, `updated`, `updating`, …
    #[serde(default)]
    pub videoroom: Option<String>,
    /// `joined`: our feed id and the private id that ties subscriptions to us.
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub private_id: Option<u64>,
    /// `joined` and `event`: publishers (new ones, in events).
    #[serde(default)]
    pub publishers: Option<Vec<Publisher>>,
    /// `attached` and `updated`: the subscription's m-lines.
    #[serde(default)]
    pub streams: Option<Vec<SubscriptionStream>>,
    #[serde(default)]
    pub configured: Option<String>,
    #[serde(default)]
    pub started: Option<String>,
    /// A feed id, or "ok" in the reply to our own unpublish.
    #[serde(default)]
    pub unpublished: Option<Value>,
    /// A participant id, or "ok" in the reply to our own leave.
    #[serde(default)]
    pub leaving: Option<Value>,
    #[serde(default)]
    pub error_code: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

impl VideoRoomData {
    /// The feed that stopped publishing or left, if this event says so about somebody else.
    pub fn gone(&self) -> Option<u64> {
        self.unpublished
            .as_ref()
            .and_then(Value::as_u64)
            .or_else(|| self.leaving.as_ref().and_then(Value::as_u64))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Publisher {
    pub id: u64,
    #[serde(default)]
    pub display: Option<String>,
    #[serde(default)]
    pub streams: Vec<PublisherStream>,
}

impl Publisher {
    /// Whether it publishes audio and video that can be subscribed to.
    pub fn media(&self) -> (bool, bool) {
        let has = |kind: &str| self.streams.iter().any(|s| s.kind == kind && !s.disabled);
        (has("audio"), has("video"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PublisherStream {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub mid: Option<String>,
    #[serde(default)]
    pub disabled: bool,
}

/// One m-line of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SubscriptionStream {
    pub mid: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Missing once the publisher left (the m-line is then inactive).
    #[serde(default)]
    pub feed_id: Option<u64>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl JanusMessage {
    /// The VideoRoom data of a plugin reply or event.
    pub fn videoroom(&self) -> Option<&VideoRoomData> {
        self.plugindata.as_ref().map(|p| &p.data)
    }

    /// A Janus-level error or a VideoRoom error, as text.
    pub fn error_text(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("janus error {}: {}", e.code, e.reason));
        }
        let data = self.videoroom()?;
        let code = data.error_code?;
        Some(format!(
            "videoroom error {code}: {}",
            data.error.as_deref().unwrap_or("")
        ))
    }

    /// The VideoRoom error code, if this is one.
    pub fn videoroom_error(&self) -> Option<u64> {
        self.videoroom().and_then(|d| d.error_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> JanusMessage {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn requests_have_the_janus_shape() {
        assert_eq!(
            create_session("t1"),
            json!({"janus": "create", "transaction": "t1"})
        );
        assert_eq!(attach(7, "t2")["plugin"], "janus.plugin.videoroom");
        assert_eq!(attach(7, "t2")["session_id"], 7);
        let (body, jsep) = publish("v=0\r\n");
        let m = message(7, 9, "t3", body, Some(jsep));
        assert_eq!(m["janus"], "message");
        assert_eq!(m["handle_id"], 9);
        assert_eq!(m["body"]["request"], "configure");
        assert_eq!(m["jsep"]["type"], "offer");
        assert_eq!(m["jsep"]["rid_order"], "lmh");
        let m = message(7, 9, "t4", join_publisher(12, 3, "x"), None);
        assert!(m.get("jsep").is_none());
        assert_eq!(m["body"]["ptype"], "publisher");
        assert_eq!(m["body"]["id"], 3);
        let sub = join_subscriber(12, Some(55), &[3, 4], 1);
        assert_eq!(sub["ptype"], "subscriber");
        assert_eq!(sub["private_id"], 55);
        assert_eq!(
            sub["streams"],
            json!([{"feed": 3, "substream": 1}, {"feed": 4, "substream": 1}])
        );
        assert_eq!(subscribe(&[5], 0)["streams"][0]["feed"], 5);
        assert_eq!(start("v=0").1["type"], "answer");
        assert_eq!(start("v=0").1["trickle"], false);
        let room = create_room(12, 100);
        assert_eq!(
            (room["room"].as_u64(), room["publishers"].as_u64()),
            (Some(12), Some(100))
        );
        assert_eq!(room["videocodec"], "vp8");
    }

    #[test]
    fn substreams_follow_the_tile_height() {
        let ladder = [180, 360, 720];
        assert_eq!(substream_for(180, &ladder), 0);
        assert_eq!(substream_for(200, &ladder), 1);
        assert_eq!(substream_for(360, &ladder), 1);
        assert_eq!(substream_for(1080, &ladder), 2);
    }

    #[test]
    fn session_and_handle_replies_parse() {
        let m = read(r#"{"janus":"success","transaction":"t1","data":{"id":4321598710948572}}"#);
        assert_eq!(m.janus, "success");
        assert_eq!(m.data.map(|d| d.id), Some(4321598710948572));
        let m = read(r#"{"janus":"ack","session_id":1,"transaction":"t5"}"#);
        assert_eq!(
            (m.janus.as_str(), m.transaction.as_deref()),
            ("ack", Some("t5"))
        );
        let m = read(
            r#"{"janus":"error","session_id":1,"transaction":"t9","error":{"code":458,"reason":"No such session 1"}}"#,
        );
        assert_eq!(
            m.error_text().as_deref(),
            Some("janus error 458: No such session 1")
        );
        let m = read(r#"{"janus":"hangup","session_id":1,"sender":2,"reason":"DTLS alert"}"#);
        assert_eq!(
            (m.sender, m.reason.as_deref()),
            (Some(2), Some("DTLS alert"))
        );
        let m = read(r#"{"janus":"webrtcup","session_id":1,"sender":2}"#);
        assert_eq!(m.janus, "webrtcup");
    }

    #[test]
    fn videoroom_events_parse() {
        let created = read(
            r#"{"janus":"success","session_id":1,"transaction":"t3","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"created","room":12,"permanent":false}}}"#,
        );
        assert_eq!(
            created.videoroom().and_then(|d| d.videoroom.as_deref()),
            Some("created")
        );
        let exists = read(
            r#"{"janus":"success","session_id":1,"transaction":"t3","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":427,"error":"Room 12 already exists"}}}"#,
        );
        assert_eq!(exists.videoroom_error(), Some(ROOM_EXISTS));

        let joined = read(
            r#"{"janus":"event","session_id":1,"transaction":"t4","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"joined","room":12,"description":"Room 12","id":3,"private_id":2874110191,"publishers":[{"id":1,"display":"host","streams":[{"type":"audio","mindex":0,"mid":"0","codec":"opus"},{"type":"video","mindex":1,"mid":"1","codec":"vp8","simulcast":true}],"talking":false}],"attendees":[]}}}"#,
        );
        let data = joined.videoroom().unwrap();
        assert_eq!((data.id, data.private_id), (Some(3), Some(2874110191)));
        let publishers = data.publishers.as_ref().unwrap();
        assert_eq!(publishers[0].id, 1);
        assert_eq!(publishers[0].media(), (true, true));

        let configured = read(
            r#"{"janus":"event","session_id":1,"transaction":"t6","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","room":12,"configured":"ok","audio_codec":"opus","video_codec":"vp8","streams":[{"type":"audio","mindex":0,"mid":"0","codec":"opus"}]}},"jsep":{"type":"answer","sdp":"v=0\r\n"}}"#,
        );
        assert_eq!(
            configured.videoroom().and_then(|d| d.configured.as_deref()),
            Some("ok")
        );
        assert_eq!(
            configured.jsep.as_ref().map(|j| j.kind.as_str()),
            Some("answer")
        );

        let newcomer = read(
            r#"{"janus":"event","session_id":1,"sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","room":12,"publishers":[{"id":5,"display":"b","streams":[{"type":"audio","mindex":0,"mid":"0","codec":"opus","disabled":true}]}]}}}"#,
        );
        let p = &newcomer.videoroom().unwrap().publishers.as_ref().unwrap()[0];
        assert_eq!(p.media(), (false, false));

        let gone = read(
            r#"{"janus":"event","session_id":1,"sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","room":12,"unpublished":5}}}"#,
        );
        assert_eq!(gone.videoroom().and_then(VideoRoomData::gone), Some(5));
        let own = read(
            r#"{"janus":"event","session_id":1,"sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","room":12,"leaving":"ok"}}}"#,
        );
        assert_eq!(own.videoroom().and_then(VideoRoomData::gone), None);

        let attached = read(
            r#"{"janus":"event","session_id":1,"transaction":"t8","sender":6,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"attached","room":12,"streams":[{"type":"audio","active":true,"mindex":0,"mid":"0","ready":false,"send":true,"feed_id":1,"feed_display":"host","feed_mid":"0","codec":"opus"},{"type":"video","active":true,"mindex":1,"mid":"1","ready":false,"send":true,"feed_id":1,"feed_mid":"1","codec":"vp8","simulcast":{"substream":1,"temporal":2}}]}},"jsep":{"type":"offer","sdp":"v=0\r\n"}}"#,
        );
        let streams = attached.videoroom().unwrap().streams.clone().unwrap();
        assert_eq!(streams[1].mid, "1");
        assert_eq!(streams[1].kind, "video");
        assert_eq!(streams[1].feed_id, Some(1));
        assert_eq!(attached.jsep.unwrap().kind, "offer");

        let inactive = read(
            r#"{"janus":"event","session_id":1,"sender":6,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"updated","room":12,"streams":[{"type":"audio","active":false,"mindex":0,"mid":"0","ready":false,"send":true}]}},"jsep":{"type":"offer","sdp":"v=0\r\n"}}"#,
        );
        let s = &inactive.videoroom().unwrap().streams.as_ref().unwrap()[0];
        assert!(!s.active && s.feed_id.is_none());

        let refused = read(
            r#"{"janus":"event","session_id":1,"transaction":"t4","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":426,"error":"No such room (12)"}}}"#,
        );
        assert_eq!(
            refused.error_text().as_deref(),
            Some("videoroom error 426: No such room (12)")
        );
    }
}
