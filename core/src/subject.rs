//! NATS-style subjects: dot-separated tokens, `*` matching exactly one token and `>` matching
//! one or more trailing tokens. Published subjects are literal; subscriptions, stream subjects
//! and consumer filters may hold wildcards.
//!
//! [`Sublist`] routes a literal subject to every pattern that matches it through a token trie,
//! so the cost follows the subject's length and the matching patterns, not the number of
//! subscriptions.

/// Longest subject accepted (bytes).
pub const SUBJECT_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectError(pub String);

impl std::fmt::Display for SubjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SubjectError {}

fn check_tokens(s: &str, wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError("subject is empty".into()));
    }
    if s.len() > SUBJECT_BYTES_MAX {
        return Err(SubjectError(format!(
            "subject is {} bytes, more than {SUBJECT_BYTES_MAX}",
            s.len()
        )));
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(SubjectError(format!("subject '{s}' has an empty token")));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubjectError(format!("subject '{s}' contains whitespace")));
        }
        let wild = *t == "*" || *t == ">";
        if wild && !wildcards {
            return Err(SubjectError(format!(
                "subject '{s}' has a wildcard; a published subject must be literal"
            )));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(SubjectError(format!(
                "subject '{s}': '>' must be the last token"
            )));
        }
    }
    Ok(())
}

/// A subject a message is published to: no wildcards.
pub fn validate_literal(s: &str) -> Result<(), SubjectError> {
    check_tokens(s, false)
}

/// A subscription, stream subject or filter: wildcards allowed.
pub fn validate_pattern(s: &str) -> Result<(), SubjectError> {
    check_tokens(s, true)
}

pub fn is_literal(s: &str) -> bool {
    !s.split('.').any(|t| t == "*" || t == ">")
}

/// Does literal `subject` match `pattern`?
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Could some literal subject match both patterns? (Streams may not overlap.)
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(s), Some(t)) if s == t || s == "*" || t == "*" => {}
            _ => return false,
        }
    }
}

/// Is every subject matched by `inner` also matched by `outer`?
pub fn subset_of(inner: &str, outer: &str) -> bool {
    let mut x = inner.split('.');
    let mut y = outer.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (_, Some(">")) => return true,
            (Some(">"), _) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(s), Some(t)) if s == t => {}
            _ => return false,
        }
    }
}

#[derive(Debug)]
struct Node<T> {
    literal: crate::FastMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Values of patterns ending in `>` here.
    tail: Vec<T>,
    /// Values of patterns ending exactly here.
    here: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: crate::FastMap::default(),
            star: None,
            tail: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.tail.is_empty()
            && self.here.is_empty()
    }
}

/// Patterns → values (subscriptions), matched by literal subjects.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq + Clone> Sublist<T> {
    pub fn new() -> Sublist<T> {
        Sublist::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern` (which must be a valid pattern).
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        let tokens: Vec<&str> = pattern.split('.').collect();
        for (i, t) in tokens.iter().enumerate() {
            if *t == ">" && i + 1 == tokens.len() {
                node.tail.push(value);
                self.len += 1;
                return;
            }
            node = if *t == "*" {
                node.star.get_or_insert_with(Default::default)
            } else {
                node.literal.entry((*t).into()).or_default()
            };
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` under `pattern`; returns whether it was there.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_at(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, tokens: &[&str], value: &T) -> bool {
        let take = |v: &mut Vec<T>| match v.iter().position(|x| x == value) {
            Some(i) => {
                v.swap_remove(i);
                true
            }
            None => false,
        };
        match tokens {
            [] => take(&mut node.here),
            [">"] => take(&mut node.tail),
            [t, rest @ ..] => {
                if *t == "*" {
                    let Some(child) = node.star.as_mut() else {
                        return false;
                    };
                    let r = Self::remove_at(child, rest, value);
                    if child.is_empty() {
                        node.star = None;
                    }
                    r
                } else {
                    let Some(child) = node.literal.get_mut(*t) else {
                        return false;
                    };
                    let r = Self::remove_at(child, rest, value);
                    if child.is_empty() {
                        node.literal.remove(*t);
                    }
                    r
                }
            }
        }
    }

    /// Every value whose pattern matches the literal `subject`.
    pub fn matching(&self, subject: &str) -> Vec<T> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut out = Vec::new();
        Self::collect(&self.root, &tokens, &mut out);
        out
    }

    fn collect(node: &Node<T>, tokens: &[&str], out: &mut Vec<T>) {
        match tokens {
            [] => out.extend(node.here.iter().cloned()),
            [t, rest @ ..] => {
                out.extend(node.tail.iter().cloned());
                if let Some(child) = node.literal.get(*t) {
                    Self::collect(child, rest, out);
                }
                if let Some(child) = &node.star {
                    Self::collect(child, rest, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate_literal("orders.eu.1").is_ok());
        assert!(validate_literal("orders.*").is_err());
        assert!(validate_literal("orders..x").is_err());
        assert!(validate_literal("").is_err());
        assert!(validate_literal("a b").is_err());
        assert!(validate_pattern("orders.*.x").is_ok());
        assert!(validate_pattern("events.>").is_ok());
        assert!(validate_pattern("events.>.x").is_err());
        assert!(validate_pattern(">").is_ok());
    }

    #[test]
    fn matching_and_overlap() {
        assert!(matches("orders.*", "orders.1"));
        assert!(!matches("orders.*", "orders.1.2"));
        assert!(matches("orders.>", "orders.1.2"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(overlaps("orders.*", "orders.eu"));
        assert!(overlaps("orders.*", "*.eu"));
        assert!(!overlaps("orders.*", "orders.eu.1"));
        assert!(overlaps("orders.>", "*.eu.1"));
        assert!(!overlaps("orders.>", "orders"));
        assert!(!overlaps("a.b", "a.c"));
        assert!(subset_of("orders.eu", "orders.*"));
        assert!(subset_of("orders.*.x", "orders.>"));
        assert!(!subset_of("orders.>", "orders.*"));
        assert!(!subset_of("orders.*", "orders.eu"));
    }

    #[test]
    fn sublist_routes_and_removes() {
        let mut s = Sublist::new();
        s.insert("orders.*", 1);
        s.insert("orders.>", 2);
        s.insert("orders.eu", 3);
        s.insert("*.eu", 4);
        s.insert(">", 5);
        let mut m = s.matching("orders.eu");
        m.sort();
        assert_eq!(m, vec![1, 2, 3, 4, 5]);
        let mut m = s.matching("orders.eu.x");
        m.sort();
        assert_eq!(m, vec![2, 5]);
        assert!(s.remove("orders.>", &2));
        assert!(!s.remove("orders.>", &2));
        assert!(s.remove(">", &5));
        let mut m = s.matching("orders.eu.x");
        m.sort();
        assert_eq!(m, Vec::<i32>::new());
        assert_eq!(s.len(), 3);
    }

    proptest::proptest! {
        /// The trie agrees with `matches` for every pattern, and `overlaps` is true exactly
        /// when some subject in a small universe matches both (for those subjects).
        #[test]
        fn sublist_agrees_with_matches(
            pats in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", ">"]), 1..4), 1..8),
            subj in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c"]), 1..5),
        ) {
            let subject = subj.join(".");
            let mut s = Sublist::new();
            let mut valid = Vec::new();
            for (i, p) in pats.iter().enumerate() {
                let p = p.join(".");
                if validate_pattern(&p).is_ok() {
                    s.insert(&p, i);
                    valid.push((i, p));
                }
            }
            let mut got = s.matching(&subject);
            got.sort();
            let want: Vec<usize> = valid.iter().filter(|(_, p)| matches(p, &subject)).map(|(i, _)| *i).collect();
            proptest::prop_assert_eq!(got, want);
            for (_, p) in &valid {
                for (_, q) in &valid {
                    if matches(p, &subject) && matches(q, &subject) {
                        proptest::prop_assert!(overlaps(p, q), "{} {} both match {}", p, q, subject);
                    }
                }
            }
        }
    }
}
