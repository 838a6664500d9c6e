//! How a stored message's id travels with it from the publish hook to the ack, so that an ack names
//! its row, on this broker and, in a cluster, on the node that delivers it.
//!
//! rmqtt's publish hook may return a changed publish, which is the one routed (and forwarded to
//! other nodes, serialized whole), queued for offline sessions and kept by the retainer. The id
//! rides in it as a user property under a key of ours. The delivery hook may change the publish
//! too: it returns the one written to the wire and kept in the session's in-flight window, which
//! the ack hook gets back. There the id moves out of the user properties into the publish's
//! `target_clientid`, which rmqtt reads only when routing a new publish and never encodes, so no
//! client sees it, and a redelivery from the in-flight window (a resumed or moved session) still
//! carries it.

use rmqtt::codec::v5::PublishProperties;
use rmqtt::types::Publish;

/// The user property that carries the id of a stored message until its delivery.
const ID: &str = "mqtt-offline-messages/id";
/// The same, on a publish that had no properties (MQTT 3.1.1), which it gets back at delivery.
const ID_NO_PROPERTIES: &str = "mqtt-offline-messages/id+none";
/// The replay a replayed message comes from, until its delivery.
const REPLAY: &str = "mqtt-offline-messages/replay";
/// Before the id in `target_clientid` of a delivered publish.
const DELIVERED: &str = "mqtt-offline-messages/id:";

fn is_ours(key: &str) -> bool {
    key == ID || key == ID_NO_PROPERTIES || key == REPLAY
}

fn is_id(key: &str) -> bool {
    key == ID || key == ID_NO_PROPERTIES
}

/// The publish as the publish hook must return it: with `msgid` carried (for a stored message), and
/// without any property a publisher set under our keys, which are ours alone (a forged id would
/// let an ack delete another row). `None`: unchanged.
pub fn stamp(publish: &Publish, msgid: Option<&str>) -> Option<Publish> {
    let forged = publish.properties.as_ref().is_some_and(|p| p.user_properties.iter().any(|(k, _)| is_ours(k)));
    if msgid.is_none() && !forged {
        return None;
    }
    let mut p = publish.clone();
    let key = if p.properties.is_some() { ID } else { ID_NO_PROPERTIES };
    let properties = p.properties.get_or_insert_with(PublishProperties::default);
    properties.user_properties.retain(|(k, _)| !is_ours(k));
    if let Some(msgid) = msgid {
        properties.user_properties.push((key.into(), msgid.into()));
    }
    Some(p)
}

/// The id a publish carries, before its delivery or after.
pub fn carried(publish: &Publish) -> Option<&str> {
    if let Some(t) = publish.target_clientid.as_deref().and_then(|t| t.strip_prefix(DELIVERED)) {
        return Some(t);
    }
    let props = publish.properties.as_ref()?;
    props.user_properties.iter().find(|(k, _)| is_id(k)).map(|(_, v)| &**v)
}

/// A replayed message as the replay numbered `serial` hands it to the session: with its id and
/// the replay's number, so that the message is dropped in the session's queue if the replay is
/// stopped before it leaves.
pub fn stamp_replayed(publish: &Publish, msgid: &str, serial: u64) -> Publish {
    let mut p = stamp(publish, Some(msgid)).expect("an id is stamped");
    if let Some(props) = p.properties.as_mut() {
        props.user_properties.push((REPLAY.into(), serial.to_string().into()));
    }
    p
}

/// The number of the replay a message in the session's queue comes from.
pub fn replay_of(publish: &Publish) -> Option<u64> {
    let props = publish.properties.as_ref()?;
    props.user_properties.iter().find(|(k, _)| k == REPLAY).and_then(|(_, v)| v.parse().ok())
}

/// The publish as the delivery hook must return it: the id moved from the user properties to
/// `target_clientid`, the properties as the publisher sent them. `None`: it carries no id in its
/// properties (not stored, or delivered before).
pub fn for_delivery(publish: &Publish) -> Option<Publish> {
    let props = publish.properties.as_ref()?;
    let (key, msgid) = props.user_properties.iter().find(|(k, _)| is_id(k))?;
    let mut p = publish.clone();
    p.target_clientid = Some(format!("{DELIVERED}{msgid}").into());
    let had_none = key == ID_NO_PROPERTIES;
    if let Some(props) = p.properties.as_mut() {
        props.user_properties.retain(|(k, _)| !is_ours(k));
        // Routing may have added subscription identifiers, which stay.
        if had_none && *props == PublishProperties::default() {
            p.properties = None;
        }
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqtt::codec::types::Publish as CodecPublish;
    use rmqtt::types::QoS;

    fn publish(properties: Option<PublishProperties>) -> Publish {
        Publish::from(CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: "t".into(),
            packet_id: None,
            payload: "x".into(),
            properties,
        })
    }

    #[test]
    fn the_id_rides_to_the_ack_and_leaves_the_properties_as_published() {
        for original in [None, Some(PublishProperties::default())] {
            let p = publish(original.clone());
            let stamped = stamp(&p, Some("abc")).unwrap();
            assert_eq!(carried(&stamped), Some("abc"));
            let delivered = for_delivery(&stamped).unwrap();
            assert_eq!(carried(&delivered), Some("abc"));
            assert_eq!(delivered.properties, original, "what goes on the wire");
            assert!(for_delivery(&delivered).is_none(), "a redelivery keeps it");
            let replayed = stamp_replayed(&p, "abc", 7);
            assert_eq!((carried(&replayed), replay_of(&replayed)), (Some("abc"), Some(7)));
            let delivered = for_delivery(&replayed).unwrap();
            assert_eq!((carried(&delivered), replay_of(&delivered)), (Some("abc"), None));
            assert_eq!(delivered.properties, original);
        }
        assert!(stamp(&publish(None), None).is_none(), "nothing to change");
    }

    #[test]
    fn a_publisher_cannot_set_an_id() {
        let forged = PublishProperties {
            user_properties: vec![(ID.into(), "victim".into()), ("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let p = stamp(&publish(Some(forged)), None).unwrap();
        assert_eq!(carried(&p), None);
        assert_eq!(p.properties.as_ref().unwrap().user_properties, vec![("k".into(), "v".into())]);
    }
}
