//! Component mode: whether an authorizer granted the platform a permission set (WeChat's
//! `funcscope_category.id`) that a message type's endpoint needs, decided with no I/O from
//! what the account has cached of the authorizer's grants and how old that is.
//!
//! A type needs any one of its configured sets (WeChat's docs list an endpoint's sets as
//! alternatives); no configured set means no check. Grants with no set at all are an
//! authorization whose sets are unknown (a record written before they were kept, or one
//! recovered from the authorizer list): never a reason to refuse.
//!
//! The cache is trusted for [`GRANTS_TTL`] when it allows a job; a refusal is only made on
//! grants read within [`REFUSE_ON`], so a set granted on any replica (`updateauthorized`)
//! lets the very next job through, and the round trip it takes is paid only by jobs that
//! would otherwise be refused.

use std::time::Duration;

/// How long cached grants that allow a job are trusted: a set revoked since is noticed this
/// late at most (WeChat then refuses the send itself).
pub const GRANTS_TTL: Duration = Duration::from_secs(60);

/// How fresh grants must be to refuse a job with them: older ones are read again first.
pub const REFUSE_ON: Duration = Duration::from_secs(1);

/// After a read that failed (Redis not answering), jobs go on unchecked this long before the
/// next try, so that they do not queue behind one read timeout after another.
pub const UNREADABLE_FOR: Duration = Duration::from_secs(5);

/// What an account holds of its authorizer's grants, and how old it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Never read, or no authorization at the last read.
    Nothing,
    /// The sets read this long ago.
    Read { granted: &'a [u32], age: Duration },
    /// The last read failed this long ago.
    Unreadable { age: Duration },
}

/// The permission sets each message type needs (any one of a type's sets will do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSets {
    /// `/cgi-bin/message/template/send`.
    pub template: Vec<u32>,
    /// `/cgi-bin/message/subscribe/bizsend`.
    pub subscribe: Vec<u32>,
    /// `/cgi-bin/message/subscribe/send`.
    pub miniprogram_subscribe: Vec<u32>,
}

/// A list of set ids as the configuration writes it: `7`, `18,89`, or empty (no check).
pub fn parse_sets(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a permission set id (a whole number)"))
        })
        .collect()
}

/// What the grants say about a job, before anything is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// A needed set is granted, the type needs none, or the grants are unknown.
    Allowed,
    /// None of the type's sets is granted.
    Missing { needed: Vec<u32> },
}

/// Whether `granted` holds one of `needed`.
pub fn permission(needed: &[u32], granted: &[u32]) -> Permission {
    if needed.is_empty() || granted.is_empty() || needed.iter().any(|n| granted.contains(n)) {
        Permission::Allowed
    } else {
        Permission::Missing {
            needed: needed.to_vec(),
        }
    }
}

/// What to do with a job given the cached grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantsStep {
    /// Go on to the token and the send.
    Go,
    /// End it `rejected`, `permission_not_granted`: none of these sets is granted.
    Refuse { needed: Vec<u32> },
    /// Read the authorizer's grants again, then decide with [`after_reread`].
    Reread,
}

/// The step for a job whose type needs `needed`, given what is cached.
pub fn grants_step(needed: &[u32], cached: Cached<'_>) -> GrantsStep {
    if needed.is_empty() {
        return GrantsStep::Go;
    }
    let (granted, age) = match cached {
        Cached::Nothing => return GrantsStep::Reread,
        Cached::Unreadable { age } if age < UNREADABLE_FOR => return GrantsStep::Go,
        Cached::Unreadable { .. } => return GrantsStep::Reread,
        Cached::Read { granted, age } => (granted, age),
    };
    match permission(needed, granted) {
        Permission::Allowed if age < GRANTS_TTL => GrantsStep::Go,
        Permission::Missing { needed } if age < REFUSE_ON => GrantsStep::Refuse { needed },
        _ => GrantsStep::Reread,
    }
}

/// The step once the grants were just read: `None` when the appid has no authorization
/// (the token fetch will say `not_authorized`), or when they could not be read (the check is
/// a help: the send goes on and WeChat decides).
pub fn after_reread(needed: &[u32], granted: Option<&[u32]>) -> GrantsStep {
    match granted.map(|g| permission(needed, g)) {
        Some(Permission::Missing { needed }) => GrantsStep::Refuse { needed },
        _ => GrantsStep::Go,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_type_needs_any_one_of_its_sets_and_unknown_grants_allow_everything() {
        assert_eq!(permission(&[7], &[1, 7]), Permission::Allowed);
        assert_eq!(permission(&[18, 89], &[89]), Permission::Allowed);
        assert_eq!(permission(&[], &[1]), Permission::Allowed, "no check");
        assert_eq!(permission(&[89], &[]), Permission::Allowed, "unknown");
        assert_eq!(
            permission(&[89], &[1, 7]),
            Permission::Missing { needed: vec![89] }
        );
    }

    #[test]
    fn cached_grants_allow_for_a_minute_and_refuse_only_when_just_read() {
        let read = |age| Cached::Read { granted: &[7], age };
        assert_eq!(grants_step(&[7], read(59 * SECOND)), GrantsStep::Go);
        assert_eq!(grants_step(&[7], read(GRANTS_TTL)), GrantsStep::Reread);
        assert_eq!(
            grants_step(&[89], read(Duration::from_millis(999))),
            GrantsStep::Refuse { needed: vec![89] }
        );
        assert_eq!(
            grants_step(&[89], read(SECOND)),
            GrantsStep::Reread,
            "a set may have been granted since: read again before refusing"
        );
        assert_eq!(grants_step(&[89], Cached::Nothing), GrantsStep::Reread);
        assert_eq!(
            grants_step(&[], Cached::Nothing),
            GrantsStep::Go,
            "no check, no read"
        );
    }

    #[test]
    fn after_a_failed_read_jobs_go_unchecked_for_a_few_seconds_then_it_is_tried_again() {
        let failed = |age| Cached::Unreadable { age };
        assert_eq!(grants_step(&[89], failed(4 * SECOND)), GrantsStep::Go);
        assert_eq!(
            grants_step(&[89], failed(UNREADABLE_FOR)),
            GrantsStep::Reread
        );
    }

    #[test]
    fn after_a_read_only_grants_that_lack_every_needed_set_refuse() {
        assert_eq!(
            after_reread(&[89], Some(&[7])),
            GrantsStep::Refuse { needed: vec![89] }
        );
        assert_eq!(after_reread(&[89], Some(&[7, 89])), GrantsStep::Go);
        assert_eq!(after_reread(&[89], Some(&[])), GrantsStep::Go, "unknown");
        assert_eq!(after_reread(&[89], None), GrantsStep::Go, "not authorized");
    }

    #[test]
    fn set_lists_parse_from_the_configuration_form() {
        assert_eq!(parse_sets("7"), Ok(vec![7]));
        assert_eq!(parse_sets(" 18, 89 "), Ok(vec![18, 89]));
        assert_eq!(parse_sets(""), Ok(vec![]));
        assert!(parse_sets("7,x").is_err());
        assert!(parse_sets("-1").is_err());
    }
}
