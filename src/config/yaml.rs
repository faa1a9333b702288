//! A YAML tree that remembers where every node was written, built from
//! saphyr-parser's events, so that every config problem can name its line
//! and column (serde_yaml's `Value` keeps no positions).
//!
//! Scalars keep their source text; whether a plain scalar is a null, bool,
//! number or string (YAML 1.2 core schema) is decided when it is read, so a
//! `version: 1.0` can still be read as the string "1.0".

use super::error::{child_index, child_key, Mark, Problem};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// Configs nest a handful of levels; the tree and serde recurse per level,
/// so a hostile `[[[[...` must stop long before the stack does.
const MAX_DEPTH: usize = 64;

/// Aliases are expanded by copying; this bounds the copies so that a small
/// file cannot expand into a huge tree ("billion laughs").
const MAX_NODES: usize = 100_000;

/// One node of the document with the position it starts at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `plain` is false for quoted and block scalars and for `!!str`:
    /// those are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are reported while building.
    Map(Vec<(Node, Node)>),
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

impl Node {
    /// The scalar's meaning, or `None` for a list or mapping.
    pub fn resolve(&self) -> Option<Resolved<'_>> {
        match &self.value {
            Value::Scalar { text, plain: true } => Some(resolve_plain(text)),
            Value::Scalar { text, plain: false } => Some(Resolved::Str(text)),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.resolve(), Some(Resolved::Null))
    }

    /// The scalar's text if it is a scalar (of any type) and not null.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// The value under `key` of a mapping.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar_text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short name of the node's kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.resolve() {
            None => match self.value {
                Value::Seq(_) => "a list",
                _ => "a mapping",
            },
            Some(Resolved::Null) => "null",
            Some(Resolved::Bool(_)) => "a boolean",
            Some(Resolved::Int(_) | Resolved::UInt(_) | Resolved::Float(_)) => "a number",
            Some(Resolved::Str(_)) => "a string",
        }
    }
}

fn resolve_plain(text: &str) -> Resolved<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(n) = u64::from_str_radix(hex, 16) {
            return Resolved::UInt(n);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(n) = u64::from_str_radix(oct, 8) {
            return Resolved::UInt(n);
        }
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Resolved::Int(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Resolved::UInt(n);
        }
    }
    if looks_like_float(digits) {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Str(text)
}

/// `[0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)?` with at least one digit: the core
/// schema's float, which Rust's parser alone would widen (`inf`, `NaN`).
fn looks_like_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int) || !digits_ok(frac) || int.len() + frac.len() == 0 {
        return false;
    }
    match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits_ok(e)
        }
    }
}

fn mark_of(span: &Span) -> Mark {
    // saphyr lines are 1-based, columns 0-based; editors count both from 1.
    Mark::new(span.start.line(), span.start.col() + 1)
}

enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
    problems: Vec<Problem>,
}

impl Builder {
    /// Adds a finished node to its parent (or makes it the root).
    fn push(&mut self, node: Node, anchor: usize, size: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        if let Some(problem) = self.duplicate_key() {
            // Keep the first value; drop this key and its value.
            self.problems.push(problem);
            if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                *key = None;
            }
            return;
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    /// When a value is about to complete an entry whose key the mapping
    /// already has: the problem to report.
    fn duplicate_key(&self) -> Option<Problem> {
        let Some(Frame::Map {
            entries,
            key: Some(k),
            ..
        }) = self.stack.last()
        else {
            return None;
        };
        let name = k.scalar_text()?;
        let (first, _) = entries
            .iter()
            .find(|(e, _)| e.scalar_text() == Some(name))?;
        Some(Problem::new(
            k.mark,
            child_key(&self.path_of_top(), name),
            format!(
                "duplicate key `{name}` (first set at line {})",
                first.mark.line
            ),
        ))
    }
}

impl Builder {
    /// The key path of the innermost open collection: each open mapping
    /// holds the key whose value is being built, each open list its length.
    fn path_of_top(&self) -> String {
        let mut path = String::new();
        let n = self.stack.len();
        for frame in self.stack.iter().take(n.saturating_sub(1)) {
            path = match frame {
                Frame::Seq { items, .. } => child_index(&path, items.len()),
                Frame::Map { key, .. } => child_key(
                    &path,
                    key.as_ref().and_then(Node::scalar_text).unwrap_or("?"),
                ),
            };
        }
        path
    }
}

/// Parses one YAML document. Returns `None` for an empty file. Syntax errors
/// end parsing (one problem); duplicate keys, unsupported tags and extra
/// documents are collected and parsing goes on.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, Vec<Problem>> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        problems: Vec::new(),
    };
    let mut documents = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => {
                let m = e.marker();
                b.problems.push(Problem::new(
                    Mark::new(m.line(), m.col() + 1),
                    "",
                    format!("invalid YAML: {}", e.info()),
                ));
                return Err(b.problems);
            }
        };
        let mark = mark_of(&span);
        b.nodes += 1;
        if b.nodes > MAX_NODES {
            b.problems.push(too_large(mark));
            return Err(b.problems);
        }
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    b.problems.push(Problem::new(
                        mark,
                        "",
                        "a policy config is one YAML document; remove the extra `---` document",
                    ));
                    return Err(b.problems);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    if tag.is_yaml_core_schema() && tag.suffix == "str" {
                        plain = false;
                    } else if !tag.is_yaml_core_schema() {
                        b.problems.push(Problem::new(
                            mark,
                            "",
                            format!("unsupported YAML tag `{tag}`"),
                        ));
                    }
                }
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                b.push(node, anchor, 1);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if b.stack.len() >= MAX_DEPTH => {
                b.problems.push(Problem::new(
                    mark,
                    "",
                    format!("nesting deeper than {MAX_DEPTH} levels"),
                ));
                return Err(b.problems);
            }
            Event::SequenceStart(anchor, _) => b.stack.push(Frame::Seq {
                mark,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => b.stack.push(Frame::Map {
                mark,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq {
                        mark,
                        anchor,
                        items,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            mark,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        mark,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            mark,
                        },
                        anchor,
                    ),
                    None => continue,
                };
                let size = count(&node);
                b.push(node, anchor, size);
            }
            Event::Alias(id) => {
                let Some((node, size)) = b.anchors.get(&id).cloned() else {
                    b.problems
                        .push(Problem::new(mark, "", "alias to an unknown anchor"));
                    return Err(b.problems);
                };
                b.nodes += size;
                if b.nodes > MAX_NODES {
                    b.problems.push(too_large(mark));
                    return Err(b.problems);
                }
                b.push(node, 0, size);
            }
            _ => {}
        }
    }
    if b.problems.is_empty() {
        Ok(b.root)
    } else {
        Err(b.problems)
    }
}

fn too_large(mark: Mark) -> Problem {
    Problem::new(
        mark,
        "",
        format!("the document is too large (more than {MAX_NODES} nodes after expanding aliases)"),
    )
}

fn count(node: &Node) -> usize {
    1 + match &node.value {
        Value::Scalar { .. } => 0,
        Value::Seq(items) => items.iter().map(count).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        parse(text).unwrap().unwrap()
    }

    #[test]
    fn marks_are_one_based_and_point_at_the_node() {
        let n = root("a:\n  b: [1, 'x']\n  c: null\n");
        let a = n.get("a").unwrap();
        let b = a.get("b").unwrap();
        assert_eq!(b.mark, Mark::new(2, 6));
        let Value::Seq(items) = &b.value else {
            panic!()
        };
        assert_eq!(items[1].mark, Mark::new(2, 10));
        assert_eq!(items[1].resolve(), Some(Resolved::Str("x")));
        assert_eq!(items[0].resolve(), Some(Resolved::Int(1)));
        assert!(a.get("c").unwrap().is_null());
    }

    #[test]
    fn core_schema_resolution() {
        let cases = [
            ("true", Resolved::Bool(true)),
            ("~", Resolved::Null),
            ("-12", Resolved::Int(-12)),
            ("0x1f", Resolved::UInt(31)),
            ("1.5", Resolved::Float(1.5)),
            ("1e3", Resolved::Float(1000.0)),
            ("1.0.0", Resolved::Str("1.0.0")),
            ("yes", Resolved::Str("yes")),
            ("inf", Resolved::Str("inf")),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), want, "{text}");
        }
        // Quoted scalars are strings whatever they look like.
        let n = root("v: '1.0'\nw: !!str true\n");
        assert_eq!(n.get("v").unwrap().resolve(), Some(Resolved::Str("1.0")));
        assert_eq!(n.get("w").unwrap().resolve(), Some(Resolved::Str("true")));
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_are_located() {
        let errs = parse("a: 1\nb: 2\na: 3\nc:\n  - {x: 1, x: 2}\n").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].mark, Mark::new(3, 1));
        assert_eq!(errs[0].path, "a");
        assert_eq!(
            (errs[1].mark, errs[1].path.as_str()),
            (Mark::new(5, 12), "c[0].x")
        );
        assert!(errs[0].message.contains("first set at line 1"), "{errs:?}");
        let errs = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.starts_with("invalid YAML"), "{errs:?}");
        assert!(errs[0].mark.line >= 2, "{errs:?}");
    }

    #[test]
    fn aliases_expand_and_are_bounded() {
        let n = root("base: &w {endpoints: [completions]}\nx: *w\n");
        assert_eq!(n.get("x").unwrap().get("endpoints").unwrap().mark.line, 1);
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g"];
        let mut prev = "a";
        for n in names {
            bomb.push_str(&format!(
                "{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = n;
        }
        let errs = parse(&bomb).unwrap_err();
        assert!(errs[0].message.contains("too large"), "{errs:?}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // Flow collections: the scanner has its own limit.
        assert!(parse(&"[".repeat(100_000)).is_err());
        // Block collections: ours.
        let errs = parse(&("- ".repeat(10_000) + "x\n")).unwrap_err();
        assert!(errs[0].message.contains("nesting deeper"), "{errs:?}");
        assert_eq!(errs[0].mark.line, 1);
    }

    #[test]
    fn empty_and_multi_document_input() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        let errs = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(errs[0].mark.line, 2);
    }
}
