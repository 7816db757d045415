//! The room's plain decisions, without actors: who its settings admit, which departures are
//! a participant leaving for good (webhooks), and what a change of grants does.

use super::Departure;
use crate::actors::peer::Grants;
use protocol::room_api::RoomSettings;
use protocol::{ErrorCode, UserId};

/// Whether the room's settings admit `user` while `others` other participants are in the
/// room on every node: a private room only its listed users and tokens with
/// `admit_private` (`forbidden`), and no more than `max_participants` (`room_full`).
pub(super) fn admits(
    settings: &RoomSettings,
    user: &UserId,
    admit_private: bool,
    others: usize,
) -> Result<(), ErrorCode> {
    if !settings.admits(user, admit_private) {
        return Err(ErrorCode::Forbidden);
    }
    if !settings.has_room_for_one_more(others) {
        return Err(ErrorCode::RoomFull);
    }
    Ok(())
}

/// Whether a departure ends the participant for good (`participant_left`): not when the
/// same user replaced it, nor when it moved to another node (it is a participant there
/// now, or its node drains and it is on its way), unless it left or was removed.
pub(super) fn left_for_good(why: Departure, draining: bool, elsewhere: bool) -> bool {
    match why {
        Departure::Replaced => false,
        Departure::Removed => true,
        Departure::PeerGone { leaving: true } => !elsewhere,
        Departure::PeerGone { leaving: false } | Departure::RoomClosed => !draining && !elsewhere,
    }
}

/// What a change of grants asks of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GrantChange {
    pub grants: Grants,
    /// Its published tracks end now.
    pub stop_publishing: bool,
    /// It receives nothing any more.
    pub stop_subscribing: bool,
    /// It receives every track of the room now.
    pub start_subscribing: bool,
}

/// The grants after the room API set `can_publish` and/or `can_subscribe` (an absent one
/// stays as it is), and what changes.
pub(super) fn change_grants(
    old: Grants,
    can_publish: Option<bool>,
    can_subscribe: Option<bool>,
) -> GrantChange {
    let grants = Grants {
        can_publish: can_publish.unwrap_or(old.can_publish),
        can_subscribe: can_subscribe.unwrap_or(old.can_subscribe),
    };
    GrantChange {
        grants,
        stop_publishing: old.can_publish && !grants.can_publish,
        stop_subscribing: old.can_subscribe && !grants.can_subscribe,
        start_subscribing: !old.can_subscribe && grants.can_subscribe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn a_private_room_admits_its_listed_users_and_private_tokens_only() {
        let settings = RoomSettings {
            private: true,
            allowed_users: vec![user("alice")],
            ..RoomSettings::default()
        };
        assert_eq!(admits(&settings, &user("alice"), false, 0), Ok(()));
        assert_eq!(
            admits(&settings, &user("bob"), false, 0),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(admits(&settings, &user("bob"), true, 0), Ok(()));
        assert_eq!(
            admits(&RoomSettings::default(), &user("bob"), false, 1_000),
            Ok(())
        );
    }

    #[test]
    fn max_participants_counts_everyone_else_in_the_room() {
        let settings = RoomSettings {
            max_participants: 3,
            ..RoomSettings::default()
        };
        assert_eq!(admits(&settings, &user("u"), false, 2), Ok(()));
        assert_eq!(
            admits(&settings, &user("u"), false, 3),
            Err(ErrorCode::RoomFull)
        );
        // Private beats full: the user may not join at all.
        let both = RoomSettings {
            private: true,
            ..settings
        };
        assert_eq!(
            admits(&both, &user("u"), false, 3),
            Err(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn only_real_departures_are_a_participant_leaving() {
        let gone = |leaving| Departure::PeerGone { leaving };
        assert!(!left_for_good(Departure::Replaced, false, false));
        assert!(left_for_good(Departure::Removed, true, true));
        assert!(left_for_good(gone(true), true, false));
        assert!(left_for_good(gone(false), false, false));
        // Its grace ran out on a draining node, or it is on another node now: it moved.
        assert!(!left_for_good(gone(false), true, false));
        assert!(!left_for_good(gone(false), false, true));
        assert!(!left_for_good(gone(true), false, true));
        assert!(left_for_good(Departure::RoomClosed, false, false));
        assert!(!left_for_good(Departure::RoomClosed, true, false));
    }

    #[test]
    fn grants_change_only_what_is_named() {
        let all = Grants {
            can_publish: true,
            can_subscribe: true,
        };
        let c = change_grants(all, Some(false), None);
        assert_eq!(
            c.grants,
            Grants {
                can_publish: false,
                can_subscribe: true
            }
        );
        assert!(c.stop_publishing && !c.stop_subscribing && !c.start_subscribing);
        let c = change_grants(all, None, Some(false));
        assert!(!c.stop_publishing && c.stop_subscribing && !c.start_subscribing);
        let c = change_grants(c.grants, Some(true), Some(true));
        assert_eq!(c.grants, all);
        assert!(!c.stop_publishing && !c.stop_subscribing && c.start_subscribing);
        let c = change_grants(all, None, None);
        assert_eq!(c.grants, all);
        assert!(!c.stop_publishing && !c.stop_subscribing && !c.start_subscribing);
    }
}
