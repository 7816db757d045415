//! Who may do what on the cluster's NATS: the roles, their subject permissions, and the
//! `authorization { users = [...] }` block of a nats-server config that grants them.
//!
//! Every process authenticates with a user name and password. There are three roles:
//!
//! - **node**: one user per node, named after the node id, so a node cannot act as another.
//!   It subscribes only to its own `node.<id>.*` subjects and its own inbox prefix
//!   `_INBOX_<id>` ([`node_inbox_prefix`]; the node connects with it as its custom inbox
//!   prefix), plus the shared subjects every node listens to (heartbeats of nodes, node
//!   deaths, room events, users). It publishes what nodes send each other (joins, resumes,
//!   peer commands, relay signaling and room-state requests to other nodes, room events,
//!   user deliveries) and what nodes tell the coordinators (its heartbeat, suspicions, rooms
//!   closed, allocation and status requests). It never publishes a coordinator's subjects
//!   (`cluster.coord.heartbeat`, `cluster.node.down`, `coord.<coordinator>.allocate`) nor
//!   the coordinators' commands to nodes (`node.*.drain`, `node.*.rooms`, `node.*.ping`).
//!   The room directory: it subscribes to the subjects of the `rooms` bucket's keys
//!   (`$KV.rooms.*`, where each write to a key is published; it listens on the keys of the
//!   rooms it hosts) and reads entries through JetStream (stream info, direct and message
//!   get). It never writes the bucket (publishing on `$KV.rooms.>` is denied) and makes no
//!   other `$JS.API` call: no consumers.
//!   Replies go through `allow_responses`: a node may answer a request it received, once,
//!   and publish to no other inbox (including JetStream flow-control replies).
//! - **coordinator**: the coordinators' shared identity (they are interchangeable and all
//!   active): the coordinator subjects, commands to nodes, and JetStream (the room
//!   directory is theirs: they create the bucket and every write is theirs).
//! - **admin**: everything; for operators' tools, tests and benchmarks that observe the
//!   cluster. Never given to a node or a coordinator.
//!
//! Node ids become subject tokens through [`crate::cluster::token`]; a user name is the
//! node id itself.

use crate::cluster::{self, token, ROOMS_BUCKET};
use crate::ids::NodeId;

/// The coordinators' user name in the generated configs and the launcher.
pub const COORDINATOR_USER: &str = "coordinator";
/// The operators' (and tests') unrestricted user in the generated configs.
pub const ADMIN_USER: &str = "admin";

/// Allow and deny lists of subjects (wildcards as NATS has them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// What a user may publish and subscribe to. `allow_responses` lets it answer, once, each
/// request it received (publish to that message's reply subject).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: SubjectRules,
    pub subscribe: SubjectRules,
    pub allow_responses: bool,
}

/// A user of the generated authorization block; `permissions: None` is unrestricted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    pub permissions: Option<Permissions>,
}

impl User {
    pub fn node(node: &NodeId, password: impl Into<String>) -> User {
        User {
            name: node.as_str().to_owned(),
            password: password.into(),
            permissions: Some(node_permissions(node)),
        }
    }

    pub fn coordinator(password: impl Into<String>) -> User {
        User {
            name: COORDINATOR_USER.to_owned(),
            password: password.into(),
            permissions: Some(coordinator_permissions()),
        }
    }

    pub fn admin(password: impl Into<String>) -> User {
        User {
            name: ADMIN_USER.to_owned(),
            password: password.into(),
            permissions: None,
        }
    }
}

/// The inbox prefix of a node's requests (`_INBOX_<token>`): replies to this node land
/// under it, and only this node may subscribe there.
pub fn node_inbox_prefix(node: &NodeId) -> String {
    format!("_INBOX_{}", token(node.as_str()))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The JetStream API calls that read the `rooms` bucket: opening it (stream info) and
/// reading an entry (direct or message get).
fn rooms_read_api() -> Vec<String> {
    let stream = format!("KV_{ROOMS_BUCKET}");
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// The subjects of the `rooms` bucket's keys, where each write to a key is published.
fn rooms_key_subjects() -> String {
    format!("$KV.{ROOMS_BUCKET}.*")
}

/// The node `node`'s permissions. See the module documentation.
pub fn node_permissions(node: &NodeId) -> Permissions {
    let me = token(node.as_str());
    let mut publish = strings(&[
        cluster::NODE_HEARTBEAT,
        cluster::NODE_SUSPECT,
        cluster::ROOM_CLOSED,
        cluster::ALLOCATE,
        cluster::NODE_STATUS,
        "node.*.join",
        "node.*.resume",
        "node.*.peer",
        "node.*.relay",
        "node.*.room_state",
        "room.*.events",
        "user.*",
        crate::webhook::SUBJECTS,
    ]);
    publish.extend(rooms_read_api());
    Permissions {
        publish: SubjectRules {
            allow: publish,
            deny: Vec::new(),
        },
        subscribe: SubjectRules {
            allow: vec![
                cluster::NODE_HEARTBEAT.to_owned(),
                cluster::NODE_DOWN.to_owned(),
                format!("node.{me}.*"),
                "room.*.events".to_owned(),
                "user.*".to_owned(),
                format!("{}.>", node_inbox_prefix(node)),
                rooms_key_subjects(),
            ],
            deny: Vec::new(),
        },
        allow_responses: true,
    }
}

/// The coordinators' permissions. See the module documentation.
pub fn coordinator_permissions() -> Permissions {
    Permissions {
        publish: SubjectRules {
            allow: strings(&[
                cluster::COORD_HEARTBEAT,
                cluster::NODE_DOWN,
                "coord.*.allocate",
                "node.*.ping",
                "node.*.rooms",
                "node.*.drain",
                "node.*.admin",
                "user.*",
                crate::webhook::SUBJECTS,
                "$JS.API.>",
                "$JS.ACK.>",
                "$KV.rooms.>",
                "$KV.room_settings.>",
            ]),
            deny: Vec::new(),
        },
        subscribe: SubjectRules {
            allow: strings(&["cluster.>", "coord.>", "node.*.drain", "_INBOX.>"]),
            deny: Vec::new(),
        },
        allow_responses: true,
    }
}

/// A string in nats-server config syntax (double-quoted, JSON escapes).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn rules(name: &str, r: &SubjectRules, out: &mut String) {
    let list = |l: &[String]| l.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ");
    out.push_str(&format!("      {name}: {{ allow: [{}]", list(&r.allow)));
    if !r.deny.is_empty() {
        out.push_str(&format!(", deny: [{}]", list(&r.deny)));
    }
    out.push_str(" }\n");
}

/// The `authorization { users = [...] }` block of a nats-server config granting `users`.
pub fn authorization_block(users: &[User]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for u in users {
        out.push_str(&format!(
            "    {{ user: {}, password: {}",
            quoted(&u.name),
            quoted(&u.password)
        ));
        match &u.permissions {
            None => out.push_str(" }\n"),
            Some(p) => {
                out.push_str(",\n    permissions: {\n");
                rules("publish", &p.publish, &mut out);
                rules("subscribe", &p.subscribe, &mut out);
                if p.allow_responses {
                    out.push_str("      allow_responses: true\n");
                }
                out.push_str("    } }\n");
            }
        }
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NATS subject matches a pattern with `*` (one token) and `>` (the rest).
    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        for (i, t) in p.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    fn may(rules: &SubjectRules, subject: &str) -> bool {
        rules.allow.iter().any(|p| matches(p, subject))
            && !rules.deny.iter().any(|p| matches(p, subject))
    }

    #[test]
    fn a_node_publishes_what_nodes_send_and_nothing_of_the_coordinators() {
        let n1 = NodeId::new("n.1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        let p = node_permissions(&n1);
        for ok in [
            cluster::node_join(&n2),
            cluster::node_peer(&n2),
            cluster::node_relay(&n2),
            cluster::node_resume(&n2),
            cluster::node_room_state(&n2),
            cluster::NODE_HEARTBEAT.to_owned(),
            cluster::ALLOCATE.to_owned(),
            "$JS.API.STREAM.INFO.KV_rooms".to_owned(),
        ] {
            assert!(may(&p.publish, &ok), "{ok}");
        }
        for denied in [
            cluster::node_drain(&n2),
            cluster::node_drain(&n1),
            cluster::node_ping(&n2),
            cluster::node_rooms(&n2),
            cluster::NODE_DOWN.to_owned(),
            cluster::COORD_HEARTBEAT.to_owned(),
            cluster::coord_allocate("c1"),
            "$KV.rooms.r1".to_owned(),
            "$JS.API.STREAM.PURGE.KV_rooms".to_owned(),
            "$JS.API.STREAM.DELETE.KV_rooms".to_owned(),
            "$JS.API.STREAM.MSG.DELETE.KV_rooms".to_owned(),
            "$JS.API.CONSUMER.CREATE.KV_rooms".to_owned(),
            "$JS.API.CONSUMER.CREATE.KV_rooms.c1.$KV.rooms.>".to_owned(),
            "_INBOX.abc".to_owned(),
        ] {
            assert!(!may(&p.publish, &denied), "{denied}");
        }
        assert!(may(&p.subscribe, &cluster::node_join(&n1)));
        assert!(may(&p.subscribe, "_INBOX_n=2E1.x.y"));
        assert!(!may(&p.subscribe, &cluster::node_join(&n2)));
        assert!(!may(&p.subscribe, "_INBOX.x"));
        assert!(!may(&p.subscribe, "_INBOX_n2.x"));
        assert!(!may(&p.subscribe, cluster::ALLOCATE));
    }

    #[test]
    fn a_node_listens_to_the_room_directory_keys_and_reads_entries() {
        let p = node_permissions(&NodeId::new("n1").unwrap());
        let key = token("room.1");
        assert!(may(&p.subscribe, &format!("$KV.rooms.{key}")));
        assert!(!may(&p.subscribe, "$KV.room_settings.r1"));
        assert!(!may(&p.publish, &format!("$KV.rooms.{key}")));
        for read in [
            "$JS.API.STREAM.INFO.KV_rooms".to_owned(),
            format!("$JS.API.DIRECT.GET.KV_rooms.$KV.rooms.{key}"),
            "$JS.API.STREAM.MSG.GET.KV_rooms".to_owned(),
        ] {
            assert!(may(&p.publish, &read), "{read}");
        }
    }

    #[test]
    fn the_block_names_every_user_quoted() {
        let n1 = NodeId::new("n1").unwrap();
        let text = authorization_block(&[
            User::admin("a\"b"),
            User::coordinator("c"),
            User::node(&n1, "p"),
        ]);
        assert!(
            text.contains(r#"{ user: "admin", password: "a\"b" }"#),
            "{text}"
        );
        assert!(text.contains(r#"user: "n1", password: "p""#), "{text}");
        assert!(text.contains(r#""node.n1.*""#), "{text}");
        assert_eq!(text.matches("allow_responses: true").count(), 2);
    }
}
