//! Property tests for the two parsers every message and template goes through: the topic matcher
//! (and the LIKE prefilter in front of it) and the SQL template parser.

use mqtt_offline_messages::template::{Dialect, SqlTemplate, Var, MESSAGE_VARS};
use mqtt_offline_messages::topic::TopicFilter;
use proptest::prelude::*;

/// Topic levels from an alphabet with the traps: LIKE's `%` and `_`, our escape `!`, `$`, case, and
/// empty levels.
fn level() -> impl Strategy<Value = String> {
    prop::string::string_regex("[ab%_!$A]{0,3}").unwrap()
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a topic is not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![4 => level(), 1 => Just("+".to_owned())], 1..5)
        .prop_flat_map(|levels| (Just(levels), any::<bool>()))
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("a filter is not empty", |f| !f.is_empty())
}

/// MQTT's matching rules, written the plain recursive way (MQTT 5 section 4.7).
fn model(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.first(), topic.first()) {
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => model(&filter[1..], &topic[1..]),
        (Some(f), Some(t)) => f == t && model(&filter[1..], &topic[1..]),
        (None, None) => true,
        _ => false,
    }
}

/// SQL's LIKE with `escape '!'`, case-sensitive (as the stores run it).
fn like(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('%') => (0..=t.len()).any(|i| go(&t[i..], &p[1..])),
            Some('_') => !t.is_empty() && go(&t[1..], &p[1..]),
            Some('!') if p.len() > 1 => t.first() == Some(&p[1]) && go(&t[1..], &p[2..]),
            Some(c) => t.first() == Some(c) && go(&t[1..], &p[1..]),
        }
    }
    go(&text.chars().collect::<Vec<_>>(), &pattern.chars().collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_matcher_agrees_with_the_mqtt_rules(f in filter(), t in topic()) {
        let parsed = TopicFilter::parse(&f).unwrap();
        let levels_f: Vec<&str> = f.split('/').collect();
        let levels_t: Vec<&str> = t.split('/').collect();
        let dollar = t.starts_with('$') && (f.starts_with('+') || f.starts_with('#'));
        prop_assert_eq!(parsed.matches(&t), !dollar && model(&levels_f, &levels_t), "filter {:?} topic {:?}", f, t);
    }

    #[test]
    fn the_like_prefilter_never_drops_a_matching_topic(f in filter(), t in topic()) {
        let parsed = TopicFilter::parse(&f).unwrap();
        if parsed.matches(&t) {
            prop_assert!(like(&t, &parsed.like_pattern()), "filter {:?} pattern {:?} drops {:?}", f, parsed.like_pattern(), t);
        }
    }

    #[test]
    fn a_topic_matches_itself_and_its_generalisations(t in topic(), plus in prop::collection::vec(any::<bool>(), 5), cut in 0usize..5) {
        let levels: Vec<&str> = t.split('/').collect();
        prop_assert!(TopicFilter::parse(&t).unwrap().matches(&t));
        let general: Vec<&str> = levels.iter().zip(&plus).map(|(l, p)| if *p { "+" } else { *l }).collect();
        let g = general.join("/");
        let hashed = format!("{}#", general[..cut.min(general.len())].iter().map(|l| format!("{l}/")).collect::<String>());
        for f in [g, hashed] {
            let expect = !(t.starts_with('$') && (f.starts_with('+') || f.starts_with('#')));
            prop_assert_eq!(TopicFilter::parse(&f).unwrap().matches(&t), expect, "filter {:?} topic {:?}", f, t);
        }
    }

    #[test]
    fn parsing_any_text_never_panics(text in ".{0,80}") {
        let _ = SqlTemplate::parse(Dialect::MySql, "k", &text, MESSAGE_VARS);
        let _ = SqlTemplate::parse(Dialect::Sqlite, "k", &text, MESSAGE_VARS);
        let _ = TopicFilter::parse(&text);
    }

    #[test]
    fn placeholders_become_parameters_in_order(
        parts in prop::collection::vec((prop::string::string_regex("[a-z0-9 ,()=<>*]{0,8}").unwrap(), 0usize..MESSAGE_VARS.len()), 1..8)
    ) {
        let mut text = String::from("select ");
        let mut expected = Vec::new();
        for (sql, var) in &parts {
            let var: Var = MESSAGE_VARS[*var];
            text.push_str(sql);
            text.push_str(&format!(" ${{{}}} ", var.name()));
            expected.push(var);
        }
        let t = SqlTemplate::parse(Dialect::MySql, "k", &text, MESSAGE_VARS).unwrap();
        prop_assert_eq!(t.vars(), expected.as_slice());
        prop_assert_eq!(t.sql().matches('?').count(), expected.len());
        prop_assert!(!t.sql().contains("${"), "{}", t.sql());
    }

    #[test]
    fn a_placeholder_inside_quotes_is_refused(before in "[a-z ]{0,6}", after in "[a-z ]{0,6}", quote in prop_oneof![Just('\''), Just('"')]) {
        let text = format!("select {quote}{before}${{topic}}{after}{quote}");
        prop_assert!(SqlTemplate::parse(Dialect::MySql, "k", &text, MESSAGE_VARS).is_err(), "{}", text);
    }

    #[test]
    fn a_multi_row_insert_repeats_its_tuple(n in 1usize..50) {
        let t = SqlTemplate::parse(Dialect::MySql, "k", "insert into t(a, b) values(${id}, FROM_UNIXTIME(${timestamp}/1000)) on duplicate key update a = a", MESSAGE_VARS).unwrap();
        prop_assert!(t.is_batchable());
        let sql = t.sql_for_rows(n);
        prop_assert_eq!(sql.matches('?').count(), 2 * n);
        prop_assert_eq!(sql.matches("FROM_UNIXTIME").count(), n);
        prop_assert!(sql.ends_with("on duplicate key update a = a"));
    }
}
