//! SQL templates: `${name}` placeholders become positional `?` parameters, bound from a message or
//! a subscription. Values are always bound, never spliced into the SQL text.
//!
//! Quotes and comments are read as the template's database reads them ([`Dialect`]), so that a
//! placeholder the database would not see (in a comment) is an error rather than a parameter that
//! is silently never bound. At start-up the store also compares each prepared statement's
//! parameter count with the template's placeholders.

/// The SQL a template is written in: where comments and quoted text begin and end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dialect {
    /// MySQL and MariaDB: `#`, `-- ` (a space or control character after the dashes) and `/* */`
    /// comments, `/*! */` and `/*M! */` comments whose text the server runs; `\` escapes in
    /// `'...'` and `"..."`.
    MySql,
    /// SQLite: `--` and `/* */` comments; `'...'`, `"..."`, `` `...` `` and `[...]` without `\`
    /// escapes.
    Sqlite,
}

/// Every variable a template may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Var {
    Id,
    From,
    Topic,
    Qos,
    /// `flags.retain`
    Retain,
    Payload,
    /// Publish time, unix milliseconds.
    Timestamp,
    /// `clientid`
    ClientId,
    /// `topic_like`: a LIKE pattern selecting the topics a filter may match.
    TopicLike,
    /// When the message expires, unix milliseconds; NULL when it never does.
    Expiry,
    /// MQTT 5 properties as a JSON object; NULL when the message has none.
    Properties,
    /// The current time, unix milliseconds.
    Now,
    /// Paging: the last `id` the replay has read (0 before the first page).
    AfterId,
    /// Paging, purging: rows per statement.
    Limit,
}

impl Var {
    const ALL: [Var; 14] = [
        Var::Id,
        Var::From,
        Var::Topic,
        Var::Qos,
        Var::Retain,
        Var::Payload,
        Var::Timestamp,
        Var::ClientId,
        Var::TopicLike,
        Var::Expiry,
        Var::Properties,
        Var::Now,
        Var::AfterId,
        Var::Limit,
    ];

    /// The name written between `${` and `}`.
    pub fn name(&self) -> &'static str {
        match self {
            Var::Id => "id",
            Var::From => "from",
            Var::Topic => "topic",
            Var::Qos => "qos",
            Var::Retain => "flags.retain",
            Var::Payload => "payload",
            Var::Timestamp => "timestamp",
            Var::ClientId => "clientid",
            Var::TopicLike => "topic_like",
            Var::Expiry => "expiry",
            Var::Properties => "properties",
            Var::Now => "now",
            Var::AfterId => "after_id",
            Var::Limit => "limit",
        }
    }

    pub fn from_name(s: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// Variables of message statements.
pub const MESSAGE_VARS: &[Var] = &[
    Var::Id,
    Var::From,
    Var::Topic,
    Var::Qos,
    Var::Retain,
    Var::Payload,
    Var::Timestamp,
    Var::Expiry,
    Var::Properties,
];
/// Variables of subscription statements.
pub const SUBSCRIPTION_VARS: &[Var] = &[Var::ClientId, Var::Topic, Var::Qos];
/// Variables of `select_message_sql`: the subscription's, the filter's LIKE pattern, the time and
/// the page.
pub const SELECT_MESSAGE_VARS: &[Var] =
    &[Var::ClientId, Var::Topic, Var::Qos, Var::TopicLike, Var::Now, Var::AfterId, Var::Limit];
/// Variables of `insert_delivery_sql`: which client has had which message.
pub const DELIVERY_VARS: &[Var] = &[Var::ClientId, Var::Id];
/// Variables of `purge_expired_sql`.
pub const PURGE_VARS: &[Var] = &[Var::Now, Var::Limit];
/// Variables of `trim_topic_sql`: the topic and how many of its messages to keep.
pub const TRIM_VARS: &[Var] = &[Var::Topic, Var::Limit];

/// A value to bind.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Something that yields a value for each variable its statements may use.
pub trait Bindings {
    fn value(&self, var: Var) -> Value<'_>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("{key}: the template is empty; fix the template in config.hocon")]
    Empty { key: &'static str },
    #[error("{key}: unknown variable ${{{var}}}; this statement can use {allowed}; fix the template in config.hocon")]
    UnknownVariable { key: &'static str, var: String, allowed: String },
    #[error("{key}: `${{` at byte {position} is not closed by `}}`; write placeholders as ${{name}}")]
    Unclosed { key: &'static str, position: usize },
    #[error("{key}: `${{}}` at byte {position} names no variable; write placeholders as ${{name}}")]
    EmptyName { key: &'static str, position: usize },
    #[error("{key}: `${{{text}}}` is not a placeholder; names are letters, digits, `_` and `.`, as in ${{clientid}}")]
    InvalidName { key: &'static str, text: String },
    #[error("{key}: placeholders are bound as parameters; remove the quotes around ${{{var}}}")]
    Quoted { key: &'static str, var: String },
    #[error("{key}: ${{{var}}} is inside a comment (`{opener}` at byte {position}), where the database would not see it; move it out, or remove it")]
    InComment { key: &'static str, var: String, opener: &'static str, position: usize },
    #[error("{key}: the quote at byte {position} is never closed; fix the template in config.hocon")]
    UnclosedQuote { key: &'static str, position: usize },
    #[error("{key}: a literal `?` is a positional parameter with no value; use a ${{name}} placeholder instead")]
    LiteralParameter { key: &'static str },
}

/// A parsed template: SQL text with `?` and the variables to bind, in order.
#[derive(Clone, Debug)]
pub struct SqlTemplate {
    key: &'static str,
    sql: String,
    vars: Vec<Var>,
    batch: Option<BatchShape>,
}

/// A statement split so that its `tuple` can be repeated for many rows: `insert ... values (tuple)
/// tail`, or a delete by one id written as `delete ... where col in (?, ?, ...)`.
#[derive(Clone, Debug)]
struct BatchShape {
    head: String,
    tuple: String,
    tail: String,
}

impl SqlTemplate {
    /// Parses `text`; `key` is the full config key named in every error, `allowed` the variables
    /// this statement may use.
    pub fn parse(
        dialect: Dialect,
        key: &'static str,
        text: &str,
        allowed: &[Var],
    ) -> Result<SqlTemplate, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::Empty { key });
        }
        let lexed = Lexed::new(dialect, text);
        if let Some(position) = lexed.unclosed_quote {
            return Err(TemplateError::UnclosedQuote { key, position });
        }
        let bytes = text.as_bytes();
        let mut sql = String::with_capacity(text.len());
        let mut vars = Vec::new();
        // `$`, `{`, `}` and `?` are ASCII, so every index below is a char boundary.
        let (mut copied, mut i) = (0, 0);
        while i < bytes.len() {
            if bytes[i] == b'?' && lexed.is_code(i) {
                return Err(TemplateError::LiteralParameter { key });
            }
            if !bytes[i..].starts_with(b"${") {
                i += 1;
                continue;
            }
            let name_end = i + 2 + bytes[i + 2..].iter().take_while(|&&b| is_name_byte(b)).count();
            let name = &text[i + 2..name_end];
            let closed = bytes.get(name_end) == Some(&b'}');
            match lexed.at(i) {
                Context::Code => {}
                // Anything but a well-formed placeholder is plain text in a string or comment.
                Context::Quoted if closed && !name.is_empty() => {
                    return Err(TemplateError::Quoted { key, var: name.to_owned() })
                }
                Context::Comment { opener, start } if closed && !name.is_empty() => {
                    return Err(TemplateError::InComment { key, var: name.to_owned(), opener, position: start })
                }
                Context::Quoted | Context::Comment { .. } => {
                    i += 1;
                    continue;
                }
            }
            if !closed {
                return Err(unclosed(key, text, i));
            }
            if name.is_empty() {
                return Err(TemplateError::EmptyName { key, position: i });
            }
            let var =
                Var::from_name(name).filter(|v| allowed.contains(v)).ok_or_else(|| TemplateError::UnknownVariable {
                    key,
                    var: name.to_owned(),
                    allowed: allowed.iter().map(|v| format!("${{{}}}", v.name())).collect::<Vec<_>>().join(", "),
                })?;
            sql.push_str(&text[copied..i]);
            sql.push('?');
            vars.push(var);
            i = name_end + 1;
            copied = i;
        }
        sql.push_str(&text[copied..]);
        let batch = batch_shape(dialect, &sql).or_else(|| id_list_shape(&sql, &vars));
        Ok(SqlTemplate { key, sql, vars, batch })
    }

    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The SQL text, placeholders replaced by `?`.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The variables to bind, in placeholder order (a variable used twice is listed twice).
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The values for one execution, in placeholder order.
    pub fn values<'a, B: Bindings>(&'a self, b: &'a B) -> impl Iterator<Item = Value<'a>> + 'a {
        self.vars.iter().map(move |v| b.value(*v))
    }

    /// True when one statement can serve many rows (see [`SqlTemplate::sql_for_rows`]): an
    /// `insert`/`replace` with a single `VALUES (...)` tuple holding every placeholder, or a
    /// `delete ... where col = ${id}` (one placeholder, last), which becomes `col in (...)`.
    pub fn is_batchable(&self) -> bool {
        self.batch.is_some()
    }

    /// The statement for `n` rows: the VALUES tuple repeated `n` times, joined by `", "`, the rest
    /// of the statement kept. Bind each row's [`SqlTemplate::values`] in turn. A template that is not
    /// batchable only has its one-row form.
    pub fn sql_for_rows(&self, n: usize) -> String {
        debug_assert!(n >= 1, "{}: a statement for no rows", self.key);
        let Some(b) = &self.batch else {
            debug_assert!(n <= 1, "{}: not a multi-row template", self.key);
            return self.sql.clone();
        };
        let mut s = String::with_capacity(b.head.len() + (b.tuple.len() + 2) * n + b.tail.len());
        s.push_str(&b.head);
        for i in 0..n {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(&b.tuple);
        }
        s.push_str(&b.tail);
        s
    }

    /// Rows per statement that keep it within `max_params` placeholders (at least 1; exactly 1 for
    /// a template that is not batchable).
    pub fn max_rows_per_statement(&self, max_params: usize) -> usize {
        if !self.is_batchable() {
            return 1;
        }
        (max_params / self.vars.len().max(1)).max(1)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

/// The error for a `${` at `position` that is not followed by a name and `}`.
fn unclosed(key: &'static str, text: &str, position: usize) -> TemplateError {
    let rest = &text[position + 2..];
    // A `}` before the line or the next placeholder ends means a bad name rather than a missing brace.
    let end = rest.find(['\n', '$']).unwrap_or(rest.len());
    match rest[..end].find('}') {
        Some(close) => TemplateError::InvalidName { key, text: rest[..close].to_owned() },
        None => TemplateError::Unclosed { key, position },
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Context {
    Code,
    /// A string or a quoted identifier, quotes included.
    Quoted,
    /// A comment, from its `opener` at byte `start`.
    Comment {
        opener: &'static str,
        start: usize,
    },
}

/// What each byte of a statement is.
struct Lexed {
    context: Vec<Context>,
    /// Where a quote that never closes opens.
    unclosed_quote: Option<usize>,
}

impl Lexed {
    fn new(dialect: Dialect, sql: &str) -> Lexed {
        let b = sql.as_bytes();
        let mut context = vec![Context::Code; b.len()];
        let mut unclosed_quote = None;
        let line_end = |from: usize| b[from..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| from + p);
        let mut i = 0;
        while i < b.len() {
            let comment = |opener| Context::Comment { opener, start: i };
            let (end, what) = match (dialect, b[i]) {
                (_, q @ (b'\'' | b'"' | b'`')) | (Dialect::Sqlite, q @ b'[') => {
                    let end = quote_end(dialect, b, i, q);
                    if end.is_none() {
                        unclosed_quote = Some(i);
                    }
                    (end.unwrap_or(b.len()), Context::Quoted)
                }
                (Dialect::MySql, b'#') => (line_end(i), comment("#")),
                // MySQL wants a space or control character after `--` (`a--1` is arithmetic there);
                // SQLite does not.
                (Dialect::MySql, b'-')
                    if b[i + 1..].starts_with(b"-")
                        && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
                {
                    (line_end(i), comment("--"))
                }
                (Dialect::Sqlite, b'-') if b[i + 1..].starts_with(b"-") => (line_end(i), comment("--")),
                // MySQL and MariaDB run the text of `/*!` (`/*!50700` from that version on) and of
                // MariaDB's `/*M!`: it is code, only its markers are comment.
                (Dialect::MySql, b'/') if b[i + 1..].starts_with(b"*!") || b[i + 1..].starts_with(b"*M!") => {
                    let marker = if b[i + 2] == b'!' { 3 } else { 4 };
                    let version = b[i + marker..].iter().take_while(|c| c.is_ascii_digit()).count();
                    let body = i + marker + version;
                    let close = (body..b.len()).find(|&p| b[p..].starts_with(b"*/"));
                    context[i..body].fill(comment("/*!"));
                    if let Some(close) = close {
                        context[close..close + 2].fill(comment("/*!"));
                    }
                    // The body is lexed as code: quotes and comments inside it count.
                    i = body;
                    continue;
                }
                (_, b'/') if b[i + 1..].starts_with(b"*") => {
                    let body = &b[i + 2..];
                    let close = (0..body.len()).find(|&p| body[p..].starts_with(b"*/"));
                    (close.map_or(b.len(), |p| i + 2 + p + 2), comment("/*"))
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            context[i..end].fill(what);
            i = end;
        }
        Lexed { context, unclosed_quote }
    }

    fn at(&self, i: usize) -> Context {
        self.context[i]
    }

    fn is_code(&self, i: usize) -> bool {
        self.context[i] == Context::Code
    }
}

/// The index just past the quote that closes the one opening at `start`. A doubled quote needs no
/// care: it closes and at once reopens.
fn quote_end(dialect: Dialect, b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let close = if quote == b'[' { b']' } else { quote };
    let escapes = dialect == Dialect::MySql && quote != b'`';
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            c if c == close => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// `delete ... where msgid = ?` (the `?` its only placeholder and the statement's last token)
/// deletes many ids as `delete ... where msgid in (?, ?, ...)`: the same rows as one statement
/// per id, since `x = ?` ORed over the ids is `x in (...)`.
fn id_list_shape(sql: &str, vars: &[Var]) -> Option<BatchShape> {
    if vars != [Var::Id] || !sql.trim_start().get(..6)?.eq_ignore_ascii_case("delete") {
        return None;
    }
    let head = sql.trim_end().strip_suffix('?')?.trim_end().strip_suffix('=')?;
    if head.ends_with(['<', '>', '!', ':']) {
        return None;
    }
    Some(BatchShape { head: format!("{} in (", head.trim_end()), tuple: "?".into(), tail: ")".into() })
}

/// Finds the `VALUES (...)` tuple of an `insert`/`replace`: the first `values` outside parentheses,
/// quotes and comments (a later one, as in `on duplicate key update qos = values(qos)`, is the
/// function). Batchable only with one tuple holding every `?`.
fn batch_shape(dialect: Dialect, sql: &str) -> Option<BatchShape> {
    let lexed = Lexed::new(dialect, sql);
    let b = sql.as_bytes();
    let mut depth = 0usize;
    let mut first_word = true;
    let mut after_values = None;
    let mut i = 0;
    while i < b.len() {
        if !lexed.is_code(i) {
            i += 1;
            continue;
        }
        match b[i] {
            b'(' => depth += 1,
            b')' => depth = depth.checked_sub(1)?,
            c if is_word_byte(c) => {
                let end = i + b[i..].iter().take_while(|&&c| is_word_byte(c)).count();
                let word = &sql[i..end];
                if first_word {
                    if !(word.eq_ignore_ascii_case("insert") || word.eq_ignore_ascii_case("replace")) {
                        return None;
                    }
                    first_word = false;
                } else if depth == 0 && word.eq_ignore_ascii_case("values") {
                    after_values = Some(end);
                    break;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let after_values = after_values?;
    let open = after_values + (sql[after_values..].len() - sql[after_values..].trim_start().len());
    if b.get(open) != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    let close = (open..b.len()).filter(|&i| lexed.is_code(i)).find(|&i| {
        match b[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        depth == 0
    })?;
    let tail = &sql[close + 1..];
    if tail.trim_start().starts_with(',') {
        return None; // already a multi-row template
    }
    if (0..open).chain(close + 1..b.len()).any(|i| b[i] == b'?' && lexed.is_code(i)) {
        return None;
    }
    Some(BatchShape { head: sql[..open].to_owned(), tuple: sql[open..=close].to_owned(), tail: tail.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_by_id_becomes_an_in_list() {
        let t =
            SqlTemplate::parse(Dialect::MySql, "k", "delete from mqtt_msg where msgid = ${id}", &[Var::Id]).unwrap();
        assert!(t.is_batchable());
        assert_eq!(t.sql_for_rows(1), "delete from mqtt_msg where msgid in (?)");
        assert_eq!(t.sql_for_rows(3), "delete from mqtt_msg where msgid in (?, ?, ?)");
        for not_a_list in [
            "delete from mqtt_msg where msgid = ${id} limit 1",
            "delete from mqtt_msg where msgid <= ${id}",
            "delete from mqtt_msg where topic = ${topic} and msgid = ${id}",
            "update mqtt_msg set gone = 1 where msgid = ${id}",
        ] {
            let t = SqlTemplate::parse(Dialect::MySql, "k", not_a_list, &[Var::Id, Var::Topic]).unwrap();
            assert!(!t.is_batchable(), "{not_a_list}");
        }
    }

    // The reference plugin's defaults.
    const INSERT: &str = "insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived) values(${id}, ${from}, ${topic}, ${qos}, ${flags.retain}, ${payload}, FROM_UNIXTIME(${timestamp}/1000))";
    const DELETE: &str = "delete from mqtt_msg where msgid = ${id}";
    const SELECT: &str = "select * from mqtt_msg where topic = ${topic}";
    const UPSERT_SUB: &str = "insert into mqtt_sub(clientid, topic, qos) values(${clientid}, ${topic}, ${qos}) on duplicate key update qos = ${qos}";
    const SELECT_SUBS: &str = "select topic, qos from mqtt_sub where clientid = ${clientid}";
    const DELETE_SUB: &str = "delete from mqtt_sub where clientid = ${clientid} and topic = ${topic}";

    fn msg(text: &str) -> SqlTemplate {
        SqlTemplate::parse(Dialect::MySql, "mysql.insert_message_sql", text, MESSAGE_VARS).unwrap()
    }

    fn sub(text: &str) -> Result<SqlTemplate, TemplateError> {
        SqlTemplate::parse(Dialect::MySql, "mysql.select_message_sql", text, SUBSCRIPTION_VARS)
    }

    fn err(text: &str) -> TemplateError {
        sub(text).map(|t| t.sql().to_owned()).unwrap_err()
    }

    #[test]
    fn the_reference_templates_parse() {
        use Var::*;
        let cases: [(&str, &[Var], &[Var], &str); 6] = [
            (
                INSERT,
                MESSAGE_VARS,
                &[Id, From, Topic, Qos, Retain, Payload, Timestamp],
                "insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived) values(?, ?, ?, ?, ?, ?, FROM_UNIXTIME(?/1000))",
            ),
            (DELETE, MESSAGE_VARS, &[Id], "delete from mqtt_msg where msgid = ?"),
            (SELECT, SUBSCRIPTION_VARS, &[Topic], "select * from mqtt_msg where topic = ?"),
            (
                UPSERT_SUB,
                SUBSCRIPTION_VARS,
                &[ClientId, Topic, Qos, Qos],
                "insert into mqtt_sub(clientid, topic, qos) values(?, ?, ?) on duplicate key update qos = ?",
            ),
            (SELECT_SUBS, SUBSCRIPTION_VARS, &[ClientId], "select topic, qos from mqtt_sub where clientid = ?"),
            (DELETE_SUB, SUBSCRIPTION_VARS, &[ClientId, Topic], "delete from mqtt_sub where clientid = ? and topic = ?"),
        ];
        for (text, allowed, vars, sql) in cases {
            let t = SqlTemplate::parse(Dialect::MySql, "k", text, allowed).unwrap();
            assert_eq!((t.vars(), t.sql()), (vars, sql));
        }
        assert!(SqlTemplate::parse(Dialect::MySql, "k", "select ${topic_like}", SELECT_MESSAGE_VARS).is_ok());
    }

    #[test]
    fn the_reference_insert_batches() {
        let t = msg(INSERT);
        assert!(t.is_batchable());
        let tuple = "(?, ?, ?, ?, ?, ?, FROM_UNIXTIME(?/1000))";
        let three = t.sql_for_rows(3);
        assert_eq!(
            three,
            format!("insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived) values{tuple}, {tuple}, {tuple}")
        );
        assert_eq!(three.matches('?').count(), 21);
        assert_eq!(t.sql_for_rows(1), t.sql());
        assert_eq!(t.max_rows_per_statement(65_535), 9362);
        assert_eq!(t.max_rows_per_statement(5), 1);
    }

    #[test]
    fn placeholders_outside_the_tuple_prevent_batching() {
        let t = sub(UPSERT_SUB).unwrap();
        assert!(!t.is_batchable());
        assert_eq!(t.sql_for_rows(1), t.sql());
        assert_eq!(t.max_rows_per_statement(65_535), 1);
        for text in [
            "insert into t (a, b) select ${id}, ${topic}",
            "insert into t (a) select ${id} from dual where not exists (select 1 from t where a = ${id})",
            "insert into t set a = ${id}",
            "insert into t (a) values (${id}), (${topic})",
            "insert into t (a) values (${id}), (0)",
            "insert into t (a) values (${id}) on duplicate key update a = ${id}",
            "update t set a = ${id}",
            "delete from t where a in (select a from u where b = ${id})",
            "select * from t where x in (values (${id}))",
            "with v as (select 1) insert into t values (${id})",
        ] {
            assert!(!msg(text).is_batchable(), "{text}");
        }
    }

    #[test]
    fn a_suffix_without_placeholders_is_kept() {
        let two = |text: &str| msg(text).sql_for_rows(2);
        assert_eq!(
            two("INSERT INTO t (a) VALUES (${id}) ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a) VALUES (?), (?) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            two("insert into t (a, q) values(${id}, ${qos}) on duplicate key update q = values(q)"),
            "insert into t (a, q) values(?, ?), (?, ?) on duplicate key update q = values(q)"
        );
        assert_eq!(
            two("insert into t (a) values (${id}) as new on duplicate key update a = new.a"),
            "insert into t (a) values (?), (?) as new on duplicate key update a = new.a"
        );
        assert_eq!(two("REPLACE INTO t VALUES\n  (${id});"), "REPLACE INTO t VALUES\n  (?), (?);");
        assert_eq!(
            two("  Insert Into t Values(${id}, (1 + (${qos})))"),
            "  Insert Into t Values(?, (1 + (?))), (?, (1 + (?)))"
        );
        assert_eq!(two("insert into t values (${id}) -- one row"), "insert into t values (?), (?) -- one row");
    }

    #[test]
    fn the_values_keyword_counts_only_as_a_word_in_code() {
        assert!(!msg("insert into my_values (v) select ${id}").is_batchable());
        assert!(!msg("insert into t (`values`) select ${id}").is_batchable());
        assert!(!msg("insert into t (a) /* values (x) */ select ${id}").is_batchable());
        let t = msg("insert into t (values_, b) values (${id}, 'values (x), (y)')");
        assert_eq!(
            t.sql_for_rows(2),
            "insert into t (values_, b) values (?, 'values (x), (y)'), (?, 'values (x), (y)')"
        );
        let t = msg("insert into t (a) values (${id}, ')(')");
        assert_eq!(t.sql_for_rows(2), "insert into t (a) values (?, ')('), (?, ')(')");
    }

    #[test]
    fn unknown_variables_name_key_and_variable() {
        let e = sub("select * from t where topic = ${clinetid}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mysql.select_message_sql: unknown variable ${clinetid}; this statement can use ${clientid}, ${topic}, \
             ${qos}; fix the template in config.hocon"
        );
        // A known variable this statement does not have is unknown here too.
        assert!(
            matches!(sub("select ${payload}"), Err(TemplateError::UnknownVariable { var, .. }) if var == "payload")
        );
        assert!(
            matches!(sub("select ${Topic}"), Err(TemplateError::UnknownVariable { .. })),
            "names are case-sensitive"
        );
        let e = SqlTemplate::parse(Dialect::MySql, "k", "select ${flags.qos}", MESSAGE_VARS).unwrap_err();
        assert!(e.to_string().contains("${flags.retain}"), "{e}");
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        assert_eq!(err("select ${topic"), TemplateError::Unclosed { key: "mysql.select_message_sql", position: 7 });
        assert_eq!(
            err("select ${topic from t where a = ${qos}"),
            TemplateError::Unclosed { key: "mysql.select_message_sql", position: 7 }
        );
        assert_eq!(err("select ${}"), TemplateError::EmptyName { key: "mysql.select_message_sql", position: 7 });
        assert_eq!(
            err("select ${client id}"),
            TemplateError::InvalidName { key: "mysql.select_message_sql", text: "client id".into() }
        );
        assert!(sub("select ${").unwrap_err().to_string().starts_with("mysql.select_message_sql: "));
        assert_eq!(err(""), TemplateError::Empty { key: "mysql.select_message_sql" });
        assert_eq!(err(" \n"), TemplateError::Empty { key: "mysql.select_message_sql" });
    }

    #[test]
    fn a_dollar_without_a_brace_is_literal() {
        let t = sub("select a$b, $1, '${', '$x' from t$ where x = ${topic} and y = $").unwrap();
        assert_eq!(t.sql(), "select a$b, $1, '${', '$x' from t$ where x = ? and y = $");
        assert_eq!(sub("select $${topic}").unwrap().sql(), "select $?");
        assert_eq!(sub("select ${topic}${qos}").unwrap().sql(), "select ??");
    }

    #[test]
    fn placeholders_in_quotes_are_errors() {
        for text in [
            "select * from t where a = '${topic}'",
            "select * from t where a = 'x ${topic} y'",
            "select * from t where a = \"${topic}\"",
            "select `${topic}` from t",
            "select * from t where a = 'it''s ${topic}'",
            "select * from t where a = 'it\\'s ${topic}'",
        ] {
            assert_eq!(
                err(text),
                TemplateError::Quoted { key: "mysql.select_message_sql", var: "topic".into() },
                "{text}"
            );
        }
        assert_eq!(
            sub("select '${topic}'").unwrap_err().to_string(),
            "mysql.select_message_sql: placeholders are bound as parameters; remove the quotes around ${topic}"
        );
    }

    #[test]
    fn quotes_end_where_sql_says() {
        for (text, sql) in [
            ("select 'it''s' = ${topic}", "select 'it''s' = ?"),
            ("select 'a\\'' = ${topic}", "select 'a\\'' = ?"),
            ("select 'a\\\\' = ${topic}", "select 'a\\\\' = ?"),
            ("select \"a\"\"b\" = ${topic}", "select \"a\"\"b\" = ?"),
            ("select `a\\` = ${topic}", "select `a\\` = ?"),
            ("select `a``b` = ${topic}", "select `a``b` = ?"),
            ("select 'a\"b', \"c'd\", `e'f` = ${topic}", "select 'a\"b', \"c'd\", `e'f` = ?"),
            ("select '' = ${topic}", "select '' = ?"),
            ("select 'é?' = ${topic} -- don't\n", "select 'é?' = ? -- don't\n"),
            ("select /* it's */ ${topic}", "select /* it's */ ?"),
            ("select 1--1 = ${qos}", "select 1--1 = ?"),
        ] {
            let t = sub(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.sql(), sql);
            assert_eq!(t.vars().len(), 1, "{text}");
        }
        assert_eq!(
            err("select 'abc = ${topic}"),
            TemplateError::UnclosedQuote { key: "mysql.select_message_sql", position: 7 }
        );
        assert!(matches!(sub("select `a"), Err(TemplateError::UnclosedQuote { .. })));
    }

    #[test]
    fn placeholders_in_comments_are_errors() {
        for text in ["select 1 -- ${topic}", "select 1 /* ${topic} */", "select 1 -- x\n/* ${topic}"] {
            assert!(matches!(sub(text), Err(TemplateError::InComment { var, .. }) if var == "topic"), "{text}");
        }
        assert_eq!(sub("select 1 -- a ${ or ?\n, ${topic}").unwrap().sql(), "select 1 -- a ${ or ?\n, ?");
    }

    fn comment_opener(dialect: Dialect, text: &str) -> Option<&'static str> {
        match SqlTemplate::parse(dialect, "k", text, SUBSCRIPTION_VARS) {
            Err(TemplateError::InComment { opener, .. }) => Some(opener),
            Ok(_) => None,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn comments_are_read_as_each_database_reads_them() {
        use Dialect::*;
        for (dialect, text, opener) in [
            (MySql, "select 1 # ${topic}", Some("#")),
            (MySql, "select 1 #${topic}", Some("#")),
            (MySql, "select 1 # x\n, ${topic}", None),
            (MySql, "select '#', \"#\", `#` = ${topic}", None),
            (MySql, "select 1 --\t${topic}", Some("--")),
            (MySql, "select 1 --\x01${topic}", Some("--")),
            (MySql, "select 1--${qos}", None),
            (MySql, "select 1 /*+ hint ${qos} */", Some("/*")),
            (Sqlite, "select 1--${qos}", Some("--")),
            (Sqlite, "select 1 -- ${qos}", Some("--")),
            (Sqlite, "select 1 /* ${qos}", Some("/*")),
            (Sqlite, "select 1 # ${topic}", None),
        ] {
            assert_eq!(comment_opener(dialect, text), opener, "{dialect:?}: {text}");
        }
        let e = SqlTemplate::parse(
            MySql,
            "mysql.insert_message_sql",
            "insert into t values (${id}) # ${topic}",
            MESSAGE_VARS,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mysql.insert_message_sql: ${topic} is inside a comment (`#` at byte 29), where the database would not see \
             it; move it out, or remove it"
        );
    }

    #[test]
    fn the_text_of_executable_comments_is_code() {
        for (text, sql) in [
            ("select 1 /*! + ${qos} */", "select 1 /*! + ? */"),
            ("select 1 /*!50700 + ${qos} */", "select 1 /*!50700 + ? */"),
            ("select 1 /*M!100100 + ${qos} */", "select 1 /*M!100100 + ? */"),
            ("select 1 /*! + '*/' */ = ${qos}", "select 1 /*! + '*/' */ = ?"),
        ] {
            let t = SqlTemplate::parse(Dialect::MySql, "k", text, SUBSCRIPTION_VARS).unwrap();
            assert_eq!((t.sql(), t.vars()), (sql, &[Var::Qos][..]));
        }
        assert_eq!(comment_opener(Dialect::MySql, "select 1 /*! # ${qos}\n */"), Some("#"));
        assert!(matches!(
            SqlTemplate::parse(Dialect::MySql, "k", "select 1 /*! ? */", SUBSCRIPTION_VARS),
            Err(TemplateError::LiteralParameter { .. })
        ));
    }

    #[test]
    fn sqlite_quotes_have_no_backslash_escapes() {
        let sqlite = |text| SqlTemplate::parse(Dialect::Sqlite, "k", text, SUBSCRIPTION_VARS);
        assert_eq!(sqlite("select 'C:\\' = ${topic}").unwrap().sql(), "select 'C:\\' = ?");
        assert!(matches!(
            SqlTemplate::parse(Dialect::MySql, "k", "select 'C:\\' = ${topic}", SUBSCRIPTION_VARS),
            Err(TemplateError::UnclosedQuote { .. })
        ));
        assert!(matches!(sqlite("select [a ${topic}] from t"), Err(TemplateError::Quoted { .. })));
        assert_eq!(sqlite("select [a\\] = ${topic}").unwrap().sql(), "select [a\\] = ?");
        assert_eq!(sqlite("select \"a\\\" = ${topic}").unwrap().sql(), "select \"a\\\" = ?");
    }

    #[test]
    fn literal_parameters_are_errors() {
        assert_eq!(err("select ? from t"), TemplateError::LiteralParameter { key: "mysql.select_message_sql" });
        assert_eq!(sub("select '?', \"?\", `?` /* ? */ from t").unwrap().vars(), &[]);
    }

    struct Row(&'static str, i64);

    impl Bindings for Row {
        fn value(&self, var: Var) -> Value<'_> {
            match var {
                Var::ClientId => Value::Text("c"),
                Var::Topic => Value::Text(self.0),
                Var::Payload => Value::Bytes(b"p"),
                _ => Value::Int(self.1),
            }
        }
    }

    #[test]
    fn values_in_placeholder_order() {
        let t = sub("delete from s where topic = ${topic} and clientid = ${clientid} and q < ${qos}").unwrap();
        assert_eq!(t.values(&Row("t", 1)).collect::<Vec<_>>(), [Value::Text("t"), Value::Text("c"), Value::Int(1)]);
        let t = sub(UPSERT_SUB).unwrap();
        assert_eq!(
            t.values(&Row("t", 2)).collect::<Vec<_>>(),
            [Value::Text("c"), Value::Text("t"), Value::Int(2), Value::Int(2)]
        );
    }

    #[test]
    fn var_names_roundtrip() {
        for v in Var::ALL {
            assert_eq!(Var::from_name(v.name()), Some(v));
        }
        assert_eq!(Var::from_name("retain"), None);
        assert_eq!(Var::Retain.name(), "flags.retain");
        assert_eq!(Var::ClientId.name(), "clientid");
    }
}
