//! Who may connect, publish and subscribe (`auth` in config.hocon): users with Argon2 password
//! hashes, and ACL rules checked in order, the first that applies deciding. With no users
//! configured, authentication is off (anonymous clients, the quick start on localhost).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::topic::TopicFilter;

/// What an ACL rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub username: String,
    /// A PHC string (`$argon2id$...`), from `mqtt-offline-messages hash-password`.
    pub password_hash: String,
}

/// One rule: `username` (`*` for anyone), the action, a topic filter in which `%u` stands for the
/// username and `%c` for the client id, and whether it allows or denies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRule {
    pub username: String,
    pub action: Action,
    pub topic: String,
    pub allow: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub users: Vec<User>,
    pub acl: Vec<AclRule>,
}

impl AuthConfig {
    /// Authentication and ACLs apply only when users are configured.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// What `new` changes, for a log line: user names and rule counts, never a hash.
    pub fn changes_to(&self, new: &AuthConfig) -> Vec<String> {
        let names = |a: &AuthConfig| a.users.iter().map(|u| u.username.clone()).collect::<Vec<_>>();
        let (old_names, new_names) = (names(self), names(new));
        let added: Vec<_> = new_names.iter().filter(|n| !old_names.contains(n)).collect();
        let removed: Vec<_> = old_names.iter().filter(|n| !new_names.contains(n)).collect();
        let rehashed: Vec<_> = new
            .users
            .iter()
            .filter(|u| self.users.iter().any(|o| o.username == u.username && o != *u))
            .map(|u| &u.username)
            .collect();
        let mut changes = Vec::new();
        for (what, list) in [("added", added), ("removed", removed), ("new password for", rehashed)] {
            if !list.is_empty() {
                changes.push(format!("auth.users: {what} {list:?}"));
            }
        }
        if self.acl != new.acl {
            changes.push(format!("auth.acl: {} rules (was {})", new.acl.len(), self.acl.len()));
        }
        changes
    }

    /// The user's password hash; for an unknown user, another user's, which the caller must not
    /// accept: the unknown user then costs what a wrong password costs.
    fn hash_to_check(&self, username: &str) -> Option<(bool, &str)> {
        match self.users.iter().find(|u| u.username == username) {
            Some(u) => Some((true, &u.password_hash)),
            None => self.users.first().map(|u| (false, u.password_hash.as_str())),
        }
    }

    /// May `username` (connected as `client_id`) publish to `topic`?
    pub fn may_publish(&self, username: &str, client_id: &str, topic: &str) -> bool {
        self.decide(username, client_id, Action::Publish, |rule| rule.matches(topic), |rule| rule.matches(topic))
    }

    /// May `username` subscribe to `filter`? An allow rule must cover every topic the filter can
    /// match; a deny rule applies as soon as the two share one topic, so that `#` does not slip
    /// past a `deny secret/#`.
    pub fn may_subscribe(&self, username: &str, client_id: &str, filter: &str) -> bool {
        let Ok(wanted) = TopicFilter::parse(filter) else { return false };
        self.decide(
            username,
            client_id,
            Action::Subscribe,
            |rule| covers(rule, &wanted),
            |rule| overlaps(rule, &wanted),
        )
    }

    fn decide(
        &self,
        username: &str,
        client_id: &str,
        action: Action,
        allows: impl Fn(&TopicFilter) -> bool,
        denies: impl Fn(&TopicFilter) -> bool,
    ) -> bool {
        for rule in &self.acl {
            if !(rule.action == action || rule.action == Action::All)
                || !(rule.username == "*" || rule.username == username)
            {
                continue;
            }
            // A name with a wildcard or a level separator would widen an allow rule (a client id
            // `+` turning `sensors/%c/#` into `sensors/+/#`): such an allow rule does not apply.
            // A deny rule it widens only denies more.
            let uses = |p: &str, value: &str| rule.topic.contains(p) && !is_plain_level(value);
            if rule.allow && (uses("%u", username) || uses("%c", client_id)) {
                continue;
            }
            let text = rule.topic.replace("%u", username).replace("%c", client_id);
            let Ok(filter) = TopicFilter::parse(&text) else { continue };
            if rule.allow && allows(&filter) {
                return true;
            }
            if !rule.allow && denies(&filter) {
                return false;
            }
        }
        false
    }
}

/// True when `value` can stand for exactly one topic level: not empty, no wildcard, no `/`.
fn is_plain_level(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0'])
}

/// True when every topic `inner` can match, `outer` matches too.
fn covers(outer: &TopicFilter, inner: &TopicFilter) -> bool {
    // A leading wildcard never matches `$` topics; an inner filter that names them needs them named.
    if inner.as_str().starts_with('$') && outer.as_str().starts_with(['+', '#']) {
        return false;
    }
    let mut o = outer.as_str().split('/');
    let mut i = inner.as_str().split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when some topic matches both filters.
fn overlaps(a: &TopicFilter, b: &TopicFilter) -> bool {
    let dollar = |f: &TopicFilter| f.as_str().starts_with('$');
    let wild = |f: &TopicFilter| f.as_str().starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.as_str().split('/');
    let mut y = b.as_str().split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when `password` matches the PHC string `hash`: one Argon2 computation, tens of
/// milliseconds of CPU by design.
fn verify_hash(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// Checks passwords without holding up the runtime: each Argon2 computation runs on a blocking
/// thread, at most half the cores' worth at a time (at least one); checks beyond that wait their
/// turn without a thread, so a flood of wrong passwords never takes a runtime worker (the batch
/// writer's, a session's) and never more than that share of the CPU. An unknown username is checked
/// against another user's hash and refused, so that it costs what a wrong password costs and the
/// answer's timing does not tell which usernames exist.
pub struct PasswordChecker {
    turns: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl PasswordChecker {
    pub fn new(metrics: Arc<Metrics>) -> PasswordChecker {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PasswordChecker { turns: Arc::new(Semaphore::new((cores / 2).max(1))), metrics }
    }

    /// True when `password` is the user's in `auth` (the users of now: a reload may change them).
    /// Unknown users are refused after the same work.
    pub async fn verify(&self, auth: Arc<AuthConfig>, username: &str, password: &[u8]) -> bool {
        let Some((known, _)) = auth.hash_to_check(username) else { return false };
        let Ok(_turn) = self.turns.acquire().await else { return false };
        let (username, password) = (username.to_owned(), password.to_vec());
        let matches = tokio::task::spawn_blocking(move || {
            auth.hash_to_check(&username).is_some_and(|(_, hash)| verify_hash(hash, &password))
        })
        .await
        .unwrap_or(false);
        Metrics::add(&self.metrics.password_checks, 1);
        known && matches
    }
}

/// A PHC string for `password` (Argon2id, a random salt): what `users[].password_hash` holds.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(username: &str, action: Action, topic: &str, allow: bool) -> AclRule {
        AclRule { username: username.into(), action, topic: topic.into(), allow }
    }

    fn config() -> AuthConfig {
        AuthConfig {
            users: vec![User { username: "ann".into(), password_hash: hash_password("pw") }],
            acl: vec![
                rule("admin", Action::All, "#", true),
                rule("*", Action::Subscribe, "secret/#", false),
                rule("*", Action::Publish, "devices/%c/#", true),
                rule("*", Action::Subscribe, "devices/+/status", true),
                rule("*", Action::Subscribe, "public/#", true),
            ],
        }
    }

    #[tokio::test]
    async fn passwords_verify_against_their_hash_only_and_unknown_users_cost_a_check() {
        let c = Arc::new(config());
        assert!(c.enabled());
        let metrics = Arc::new(Metrics::new());
        let checker = PasswordChecker::new(metrics.clone());
        assert!(checker.verify(c.clone(), "ann", b"pw").await);
        assert!(!checker.verify(c.clone(), "ann", b"PW").await);
        // Ann's password, under a name nobody has: refused, after a check like any other.
        assert!(!checker.verify(c, "bob", b"pw").await);
        assert_eq!(metrics.password_checks.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    // On a runtime of one thread, another task runs while a check computes: the hash is not on
    // the runtime's thread (inline, the check would finish first).
    #[tokio::test(flavor = "current_thread")]
    async fn a_check_leaves_the_runtime_thread_to_other_tasks() {
        let checker = PasswordChecker::new(Arc::new(Metrics::new()));
        let order = std::sync::Mutex::new(Vec::new());
        tokio::join!(
            async {
                assert!(!checker.verify(Arc::new(config()), "ann", b"wrong").await);
                order.lock().unwrap().push("check");
            },
            async {
                tokio::task::yield_now().await;
                order.lock().unwrap().push("other task");
            }
        );
        assert_eq!(*order.lock().unwrap(), ["other task", "check"]);
    }

    #[test]
    fn publish_rules_substitute_the_client_id() {
        let c = config();
        assert!(c.may_publish("ann", "d1", "devices/d1/temp"));
        assert!(!c.may_publish("ann", "d1", "devices/d2/temp"), "another device's topic");
        assert!(c.may_publish("admin", "x", "anything"));
        assert!(!c.may_publish("ann", "d1", "public/x"), "no rule: denied");
    }

    #[test]
    fn a_client_id_with_wildcards_or_levels_does_not_widen_an_allow_rule() {
        let c = config();
        for id in ["+", "#", "a/b", ""] {
            assert!(!c.may_publish("ann", id, "devices/d2/temp"), "client id {id:?}");
        }
        let mut c = config();
        c.acl.insert(0, rule("*", Action::Subscribe, "secret/%c", false));
        assert!(!c.may_subscribe("ann", "+", "secret/x"), "a widened deny still denies");
    }

    #[test]
    fn a_subscription_must_be_covered_and_a_deny_applies_on_any_overlap() {
        let c = config();
        assert!(c.may_subscribe("ann", "c", "devices/+/status"));
        assert!(c.may_subscribe("ann", "c", "devices/d1/status"));
        assert!(!c.may_subscribe("ann", "c", "devices/#"), "wider than the rule");
        assert!(!c.may_subscribe("ann", "c", "#"), "overlaps secret/#");
        assert!(!c.may_subscribe("ann", "c", "+/x"), "overlaps secret/x");
        assert!(c.may_subscribe("ann", "c", "public/a/+"));
        assert!(c.may_subscribe("admin", "c", "#"), "the first matching rule decides");
    }

    #[test]
    fn covering_and_overlapping_filters() {
        let f = |s: &str| TopicFilter::parse(s).unwrap();
        assert!(covers(&f("a/#"), &f("a/b/+")));
        assert!(covers(&f("a/+"), &f("a/b")));
        assert!(!covers(&f("a/+"), &f("a/#")));
        assert!(!covers(&f("a/b"), &f("a/+")));
        assert!(!covers(&f("#"), &f("$SYS/x")));
        assert!(overlaps(&f("a/+"), &f("+/b")));
        assert!(overlaps(&f("#"), &f("a")));
        assert!(!overlaps(&f("a/b"), &f("a/c")));
        assert!(!overlaps(&f("a/+"), &f("a/b/c")));
    }
}
