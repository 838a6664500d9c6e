//! MQTT topic names and filters (MQTT 3.1.1 section 4.7, MQTT 5 section 4.7).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("a topic filter must not be empty")]
    Empty,
    #[error("a topic filter must not contain the NUL character")]
    Nul,
    #[error("'#' must be the last level and alone in it, as in \"a/#\"")]
    MultiLevel,
    #[error("'+' must be alone in its level, as in \"a/+/c\"")]
    SingleLevel,
}

/// A validated topic filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    /// Byte offset of the first wildcard level (`+` or `#`), if any.
    wildcard_at: Option<usize>,
}

impl TopicFilter {
    pub fn parse(filter: &str) -> Result<TopicFilter, TopicError> {
        if filter.is_empty() {
            return Err(TopicError::Empty);
        }
        if filter.contains('\0') {
            return Err(TopicError::Nul);
        }
        let mut wildcard_at = None;
        let mut start = 0;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level.contains('#') && (level != "#" || !last) {
                return Err(TopicError::MultiLevel);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::SingleLevel);
            }
            if wildcard_at.is_none() && (level == "+" || level == "#") {
                wildcard_at = Some(start);
            }
            start += level.len() + 1;
        }
        Ok(TopicFilter { text: filter.to_owned(), wildcard_at })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn has_wildcards(&self) -> bool {
        self.wildcard_at.is_some()
    }

    /// The literal text before the first wildcard level: `"a/b/"` for `a/b/+/c`, `""` for `#`,
    /// the whole filter when it has no wildcard. Every topic the filter matches starts with it,
    /// except one: `a/#` also matches `a` (see [`TopicFilter::like_pattern`]).
    pub fn literal_prefix(&self) -> &str {
        &self.text[..self.wildcard_at.unwrap_or(self.text.len())]
    }

    /// A SQL LIKE pattern, with `!` as the escape character (`... like ? escape '!'`), that selects
    /// every topic this filter can match by the filter's literal prefix, so that an index on the
    /// topic serves it. It may select more (e.g. `a%` for `a/#` also selects `ab`): the exact match
    /// is [`TopicFilter::matches`].
    ///
    /// `!` rather than `\`: `escape '!'` reads the same in MySQL and SQLite, while a backslash must
    /// be doubled inside a MySQL string literal (unless `NO_BACKSLASH_ESCAPES`) and not in SQLite.
    pub fn like_pattern(&self) -> String {
        let prefix = self.literal_prefix();
        if !self.has_wildcards() {
            return escape_like(prefix);
        }
        // `a/#` also matches its parent `a`: leave the separator out.
        let prefix = if self.text[prefix.len()..].starts_with('#') {
            prefix.strip_suffix('/').unwrap_or(prefix)
        } else {
            prefix
        };
        let mut p = escape_like(prefix);
        p.push('%');
        p
    }

    /// Whether `topic` matches this filter. A string that is not a valid topic name (see
    /// [`is_valid_topic_name`]) matches nothing.
    pub fn matches(&self, topic: &str) -> bool {
        if !is_valid_topic_name(topic) {
            return false;
        }
        // MQTT-4.7.2-1: a filter starting with a wildcard does not match topics starting with '$'.
        if topic.starts_with('$') && self.text.starts_with(['+', '#']) {
            return false;
        }
        let mut filter = self.text.split('/');
        let mut name = topic.split('/');
        loop {
            match (filter.next(), name.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(n)) if f == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A shared subscription: `$share/{group}/{filter}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedSubscription<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Splits a shared subscription into group and filter, as a broker that supports them reads a
/// SUBSCRIBE: `$share/`, the group up to the next `/`, and a filter that is not empty. `None` for
/// anything else, which is an ordinary filter (`$queue/x` included: to MQTT 5 and to rmqtt it is
/// the literal topic filter `$queue/x`, and reading it as a share of `x` would replay and consume
/// rows of `x` to a client that was allowed only `$queue/...`). MQTT 5 forbids an empty group and
/// wildcards in it; a broker refuses such a SUBSCRIBE or, as rmqtt 0.24 does, takes the group
/// as written, so they are not refused here.
pub fn parse_shared(filter: &str) -> Option<SharedSubscription<'_>> {
    let (group, filter) = filter.strip_prefix("$share/")?.split_once('/')?;
    (!filter.is_empty()).then_some(SharedSubscription { group, filter })
}

/// `$SYS` and everything below it: broker statistics, never persisted.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Whether `topic` may be published to: non-empty, no wildcard, no NUL.
pub fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// `text` with LIKE's wildcards (and the escape character `!` itself) escaped by `!`.
fn escape_like(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(c, '!' | '%' | '_') {
            p.push('!');
        }
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter).unwrap().matches(topic)
    }

    #[test]
    fn matches_as_the_spec_examples() {
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis/player2"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis/player10"));
        assert!(m("sport/#", "sport"));
        assert!(m("sport/#", "sport/"));
        assert!(!m("sport/#", "sports"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/tennis/+", "sport/tennis"));
        assert!(m("sport/+/player1", "sport/tennis/player1"));
        assert!(!m("sport/+", "sport/tennis/player1"));
        assert!(m("sport/+", "sport/"));
        assert!(!m("sport/+", "sport"));
        assert!(m("+", "sport"));
        assert!(m("+/tennis/#", "sport/tennis/player1/ranking"));
        assert!(m("#", "anything/at/all"));
        assert!(m("#", "/"));
    }

    #[test]
    fn literal_levels_compare_exactly() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
        assert!(!m("a/b", "A/b"), "case-sensitive");
        assert!(!m("a/b", "a/b/"), "a trailing separator adds an empty level");
        assert!(!m("a/b", "a/b "));
        assert!(m("ü/€", "ü/€"));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(m("a//b", "a//b"));
        assert!(!m("a//b", "a/b"));
        assert!(m("a/+/b", "a//b"));
        assert!(m("/", "/"));
        assert!(!m("/", "a/"));
        assert!(m("+/+", "/"));
        assert!(m("/#", "/"));
        assert!(m("a/#", "a//"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!m("#", "$SYS/x"));
        assert!(!m("#", "$SYS"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!m("+", "$x"));
        assert!(m("$SYS/#", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(m("a/+", "a/$x"), "only the first level is special");
    }

    #[test]
    fn invalid_topic_names_match_nothing() {
        assert!(!m("#", ""));
        assert!(!m("a/+", "a/+"));
        assert!(!m("a/#", "a/#"));
        assert!(!m("#", "a\0b"));
        assert!(is_valid_topic_name("a/b") && is_valid_topic_name("/") && is_valid_topic_name("$SYS/x"));
        for bad in ["", "a/+", "+", "a/#", "a+b", "a\0"] {
            assert!(!is_valid_topic_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn invalid_filters_are_rejected() {
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::parse("a/#/b"), Err(TopicError::MultiLevel));
        assert_eq!(TopicFilter::parse("#/"), Err(TopicError::MultiLevel));
        assert_eq!(TopicFilter::parse("a#"), Err(TopicError::MultiLevel));
        assert_eq!(TopicFilter::parse("a/#b"), Err(TopicError::MultiLevel));
        assert_eq!(TopicFilter::parse("##"), Err(TopicError::MultiLevel));
        assert_eq!(TopicFilter::parse("a/b+"), Err(TopicError::SingleLevel));
        assert_eq!(TopicFilter::parse("+a"), Err(TopicError::SingleLevel));
        assert_eq!(TopicFilter::parse("++"), Err(TopicError::SingleLevel));
        assert_eq!(TopicFilter::parse("a\0b"), Err(TopicError::Nul));
        for ok in ["#", "+", "/", "//", "+/+", "/#", "+/#", "a/+/#", "$SYS/#", " ", "a b/c"] {
            assert_eq!(TopicFilter::parse(ok).map(|f| f.as_str().to_owned()), Ok(ok.to_owned()), "{ok:?}");
        }
    }

    #[test]
    fn literal_prefix_and_wildcards() {
        let f = |s: &str| TopicFilter::parse(s).unwrap();
        assert_eq!(f("a/b/+/c").literal_prefix(), "a/b/");
        assert_eq!(f("a/b/#").literal_prefix(), "a/b/");
        assert_eq!(f("#").literal_prefix(), "");
        assert_eq!(f("+/a/#").literal_prefix(), "");
        assert_eq!(f("/+").literal_prefix(), "/");
        assert_eq!(f("a/b").literal_prefix(), "a/b");
        assert!(f("a/+").has_wildcards() && f("#").has_wildcards());
        assert!(!f("a/b").has_wildcards() && !f("/").has_wildcards());
    }

    #[test]
    fn like_patterns_select_by_literal_prefix() {
        let p = |f: &str| TopicFilter::parse(f).unwrap().like_pattern();
        assert_eq!(p("a/b"), "a/b");
        assert_eq!(p("a/+/c"), "a/%");
        assert_eq!(p("a/#"), "a%");
        assert_eq!(p("/#"), "%");
        assert_eq!(p("#"), "%");
        assert_eq!(p("+/x"), "%");
        assert_eq!(p("100%_sure!/#"), "100!%!_sure!!%");
        assert_eq!(p("a_b"), "a!_b");
    }

    #[test]
    fn shared_subscriptions() {
        let share = |group, filter| Some(SharedSubscription { group, filter });
        assert_eq!(parse_shared("$share/g1/a/+"), share("g1", "a/+"));
        assert_eq!(parse_shared("$share/g/#"), share("g", "#"));
        assert_eq!(parse_shared("$share/g//a"), share("g", "/a"));
        // As rmqtt takes them (MQTT 5 forbids both).
        assert_eq!(parse_shared("$share//a"), share("", "a"));
        assert_eq!(parse_shared("$share/+/a"), share("+", "a"));
        for not_shared in
            ["a/b", "$share", "$share/", "$share/g", "$share/g/", "$queue/a", "$queue/a/#", "$SYS/x", "x/$share/g/a"]
        {
            assert_eq!(parse_shared(not_shared), None, "{not_shared:?}");
        }
    }

    #[test]
    fn sys_topics() {
        assert!(is_sys_topic("$SYS/broker") && is_sys_topic("$SYS"));
        assert!(!is_sys_topic("$SYSX/a") && !is_sys_topic("$sys/a") && !is_sys_topic("a/$SYS"));
    }
}
