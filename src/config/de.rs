//! A serde `Deserializer` over the marked YAML tree. Raw config types derive
//! `Deserialize` as usual; this deserializer adds what serde_yaml cannot:
//!
//! - every error carries the line, column and key path of the node it is
//!   about (the innermost node that failed);
//! - unknown keys of a struct are *recorded and skipped* instead of ending
//!   the parse, so that all of them are reported at once (every struct read
//!   through here is strict, as if `deny_unknown_fields`);
//! - [`Spanned<T>`] captures where a value was written, for checks made
//!   after deserializing (a regex that does not compile, an empty list).
//!
//! A wrong *value* ends serde's pass over the piece being read, so
//! [`read_partial`] reports it, drops the mapping entry that holds it and
//! reads the piece again, until no error is left. Callers also read the
//! config in small pieces (each section, each policy, each provider target)
//! so that a mistake in one cannot hide those in another.

use super::error::{child_index, child_key, unknown_word, Mark, Problem};
use super::yaml::{Node, Resolved, Value};
use serde::de::{
    self, value::BorrowedStrDeserializer, DeserializeOwned, DeserializeSeed, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

/// Where problems found while reading go.
pub(crate) type Sink = RefCell<Vec<Problem>>;

/// Reads `node` as a `T`. Problems (every error found, and any unknown
/// keys skipped on the way) go to `sink`; `None` when anything was wrong
/// with a value. `extra_keys` are accepted elsewhere by the caller and are
/// only listed in the "expected one of" of unknown-key messages at the top.
pub(crate) fn from_node<T: DeserializeOwned>(
    node: &Node,
    path: &str,
    sink: &Sink,
    extra_keys: &'static [&'static str],
) -> Option<T> {
    read_partial(node, path, sink, extra_keys).and_then(|(v, complete)| complete.then_some(v))
}

/// Most entries one piece can have before the search for further errors
/// gives up (each pass drops one bad entry).
const MAX_PASSES: usize = 64;

/// As [`from_node`], but when a value is wrong, reports it, drops the
/// mapping entry holding it (the innermost one) and reads again, so that
/// the other entries' mistakes are reported too. Returns the value read without the dropped entries
/// and `false` for "complete" if any were dropped: good enough for checks
/// of single values (a regex), not for checks that need an entry present.
pub(crate) fn read_partial<T: DeserializeOwned>(
    node: &Node,
    path: &str,
    sink: &Sink,
    extra_keys: &'static [&'static str],
) -> Option<(T, bool)> {
    let mut found: Vec<Problem> = Vec::new();
    let add = |p: Problem, found: &mut Vec<Problem>| {
        if !found.contains(&p) {
            found.push(p);
        }
    };
    let mut working: Option<Node> = None;
    let mut dropped: Vec<String> = Vec::new();
    let mut result = None;
    for _ in 0..MAX_PASSES {
        let current = working.as_ref().unwrap_or(node);
        let local = Sink::default();
        let read = T::deserialize(NodeDe {
            node: current,
            path: path.to_string(),
            sink: &local,
            extra_keys,
        });
        for p in local.into_inner() {
            add(p, &mut found);
        }
        let e = match read {
            Ok(v) => {
                result = Some((v, dropped.is_empty()));
                break;
            }
            Err(e) => e,
        };
        let trail = e.trail.clone();
        // "missing key `x`" after dropping a bad `x` says nothing new.
        if !e.missing.is_some_and(|m| dropped.iter().any(|d| d == m)) {
            add(e.into_problem(current.mark, path), &mut found);
        }
        let Some(mut trail) = trail else { break };
        trail.reverse();
        let mut next = current.clone();
        let Some(key) = remove_entry(&mut next, &trail) else {
            break;
        };
        dropped.push(key);
        working = Some(next);
    }
    sink.borrow_mut().extend(found);
    result
}

/// Removes the mapping entry at `trail` (outermost index first: entry
/// indices in mappings, item indices in lists); returns its key.
fn remove_entry(node: &mut Node, trail: &[usize]) -> Option<String> {
    match (trail, &mut node.value) {
        ([i], Value::Map(entries)) if *i < entries.len() => {
            let (k, _) = entries.remove(*i);
            Some(k.scalar_text().unwrap_or_default().to_string())
        }
        ([i, rest @ ..], Value::Map(entries)) => remove_entry(&mut entries.get_mut(*i)?.1, rest),
        ([i, rest @ ..], Value::Seq(items)) => remove_entry(items.get_mut(*i)?, rest),
        _ => None,
    }
}

/// The error type of the deserializer: a message, located once by the
/// innermost node it passes through.
#[derive(Debug)]
pub(crate) struct DeError {
    message: String,
    located: Option<(Mark, String)>,
    /// Where the failed value sits: the index of its entry in the innermost
    /// mapping, then the indices of each enclosing entry or list item
    /// (innermost first). `None` for errors not inside any mapping entry.
    trail: Option<Vec<usize>>,
    /// The key, for a "missing key" error.
    missing: Option<&'static str>,
}

impl DeError {
    fn locate(mut self, node: &Node, path: &str) -> Self {
        if self.located.is_none() {
            self.located = Some((node.mark, path.to_string()));
        }
        self
    }

    fn into_problem(self, mark: Mark, path: &str) -> Problem {
        let (mark, path) = self.located.unwrap_or_else(|| (mark, path.to_string()));
        Problem::new(mark, path, self.message)
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            located: None,
            trail: None,
            missing: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, found {}",
            expected(exp),
            unexpected(unexp)
        ))
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, found {}",
            expected(exp),
            unexpected(unexp)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_word("value", variant, expected))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_word("key", field, expected))
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = Self::custom(format_args!("missing key `{field}`"));
        e.missing = Some(field);
        e
    }
}

/// serde's words for what was expected, in YAML's terms; derived structs
/// describe themselves by their Rust name, which means nothing in a config.
fn expected(exp: &dyn de::Expected) -> String {
    let text = exp.to_string();
    if text.starts_with("struct ") {
        return "a mapping".to_string();
    }
    match text.as_str() {
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        _ => text,
    }
}

/// serde's wording, minus the word "unit" that means nothing to YAML users.
fn unexpected(u: de::Unexpected) -> String {
    match u {
        de::Unexpected::Unit => "null".to_string(),
        de::Unexpected::Map => "a mapping".to_string(),
        de::Unexpected::Seq => "a list".to_string(),
        other => other.to_string(),
    }
}

/// Deserializes one node.
pub(crate) struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    sink: &'a Sink,
    extra_keys: &'static [&'static str],
}

impl<'a> NodeDe<'a> {
    fn map(
        &self,
        entries: &'a [(Node, Node)],
        fields: Option<&'static [&'static str]>,
    ) -> MapDe<'a> {
        MapDe {
            entries: entries.iter(),
            path: self.path.clone(),
            sink: self.sink,
            fields,
            extra_keys: self.extra_keys,
            value: None,
            total: entries.len(),
            current: 0,
        }
    }

    fn seq(&self, items: &'a [Node]) -> SeqDe<'a> {
        SeqDe {
            items: items.iter().enumerate(),
            path: self.path.clone(),
            sink: self.sink,
        }
    }

    fn invalid<V: de::Expected>(&self, exp: &V) -> DeError {
        let unexp = match self.node.resolve() {
            None => match self.node.value {
                Value::Seq(_) => de::Unexpected::Seq,
                _ => de::Unexpected::Map,
            },
            Some(Resolved::Null) => de::Unexpected::Unit,
            Some(Resolved::Bool(b)) => de::Unexpected::Bool(b),
            Some(Resolved::Int(i)) => de::Unexpected::Signed(i),
            Some(Resolved::UInt(u)) => de::Unexpected::Unsigned(u),
            Some(Resolved::Float(f)) => de::Unexpected::Float(f),
            Some(Resolved::Str(s)) => de::Unexpected::Str(s),
        };
        de::Error::invalid_type(unexp, exp)
    }

    fn any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(self.seq(items)),
            Value::Map(entries) => visitor.visit_map(self.map(entries, None)),
            Value::Scalar { text, .. } => match self.node.resolve() {
                Some(Resolved::Null) | None => visitor.visit_unit(),
                Some(Resolved::Bool(b)) => visitor.visit_bool(b),
                Some(Resolved::Int(i)) => visitor.visit_i64(i),
                Some(Resolved::UInt(u)) => visitor.visit_u64(u),
                Some(Resolved::Float(f)) => visitor.visit_f64(f),
                Some(Resolved::Str(_)) => visitor.visit_borrowed_str(text),
            },
        }
    }

    /// Any non-null scalar reads as its source text, so `version: 1.0`
    /// and `name: 2024` are the strings the user sees in the file.
    fn text<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => visitor.visit_borrowed_str(text),
            _ => Err(self.invalid(&visitor)),
        }
    }
}

/// Wraps each deserialize method so that errors get this node's position
/// unless an inner node already claimed them.
macro_rules! located {
    ($self:ident, $body:expr) => {{
        let node = $self.node;
        let path = $self.path.clone();
        let r: Result<_, DeError> = $body;
        r.map_err(|e| e.locate(node, &path))
    }};
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, self.any(visitor))
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, self.text(visitor))
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, self.text(visitor))
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, self.text(visitor))
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            // Errors are located by the inner call.
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, {
            if self.node.is_null() {
                visitor.visit_unit()
            } else {
                Err(self.invalid(&visitor))
            }
        })
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, {
            match &self.node.value {
                Value::Seq(items) => visitor.visit_seq(self.seq(items)),
                // `hosts:` with nothing after it reads as an empty list.
                _ if self.node.is_null() => visitor.visit_seq(self.seq(&[])),
                _ => Err(self.invalid(&visitor)),
            }
        })
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        located!(self, {
            match &self.node.value {
                Value::Map(entries) => visitor.visit_map(self.map(entries, None)),
                _ if self.node.is_null() => visitor.visit_map(self.map(&[], None)),
                _ => Err(self.invalid(&visitor)),
            }
        })
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            return visitor.visit_map(SpannedDe {
                de: Some(self),
                step: 0,
            });
        }
        located!(self, {
            match &self.node.value {
                Value::Map(entries) => visitor.visit_map(self.map(entries, Some(fields))),
                // `audit-logger:` with nothing after it: all defaults.
                _ if self.node.is_null() => visitor.visit_map(self.map(&[], Some(fields))),
                _ => Err(self.invalid(&visitor)),
            }
        })
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        located!(self, {
            match &self.node.value {
                Value::Scalar { text, .. } if !self.node.is_null() => {
                    visitor.visit_enum(UnitVariant { text })
                }
                _ => Err(de::Error::custom(format_args!(
                    "expected one of {}, found {}",
                    super::error::one_of(variants),
                    self.node.kind_name()
                ))),
            }
        })
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'a>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        tuple tuple_struct
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: String,
    sink: &'a Sink,
}

impl<'a> SeqAccess<'a> for SeqDe<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let de = NodeDe {
            node,
            path: child_index(&self.path, i),
            sink: self.sink,
            extra_keys: &[],
        };
        seed.deserialize(de).map(Some).map_err(|mut e| {
            if let Some(t) = &mut e.trail {
                t.push(i);
            }
            e
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    path: String,
    sink: &'a Sink,
    /// The struct's keys: others are recorded as problems and skipped.
    /// `None` for free-form maps (`headers:`).
    fields: Option<&'static [&'static str]>,
    extra_keys: &'static [&'static str],
    value: Option<(&'a Node, String)>,
    total: usize,
    /// Index of the entry being read.
    current: usize,
}

impl MapDe<'_> {
    fn mark_entry(&self, mut e: DeError) -> DeError {
        e.trail.get_or_insert_with(Vec::new).push(self.current);
        e
    }
}

/// A hint for a key written one level too high: a provider target's
/// settings belong in its `provider:` map.
fn misplaced(fields: &[&str], key: &str) -> &'static str {
    const PROVIDER_KEYS: [&str; 4] = ["type", "base_url", "api_key_env", "models"];
    if fields.contains(&"provider") && PROVIDER_KEYS.contains(&key) {
        "; it belongs under the target's `provider:`"
    } else {
        ""
    }
}

impl<'a> MapAccess<'a> for MapDe<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        loop {
            let Some((key, value)) = self.entries.next() else {
                return Ok(None);
            };
            self.current = self.total - self.entries.len() - 1;
            let name = key.scalar_text();
            let path = child_key(&self.path, name.unwrap_or("?"));
            if let Some(fields) = self.fields {
                let known = name.is_some_and(|n| fields.contains(&n));
                if !known {
                    let message = match name {
                        Some(n) => {
                            let mut expected: Vec<&str> = fields.to_vec();
                            expected.extend(self.extra_keys);
                            let mut message = unknown_word("key", n, &expected);
                            message.push_str(misplaced(fields, n));
                            message
                        }
                        None => format!("keys must be plain names, found {}", key.kind_name()),
                    };
                    self.sink
                        .borrow_mut()
                        .push(Problem::new(key.mark, path, message));
                    continue;
                }
            }
            self.value = Some((value, path.clone()));
            let de = NodeDe {
                node: key,
                path,
                sink: self.sink,
                extra_keys: &[],
            };
            return seed
                .deserialize(de)
                .map(Some)
                .map_err(|e| self.mark_entry(e));
        }
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom(
                "internal: value requested before its key",
            ));
        };
        seed.deserialize(NodeDe {
            node,
            path,
            sink: self.sink,
            extra_keys: &[],
        })
        .map_err(|e| self.mark_entry(e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct UnitVariant<'a> {
    text: &'a str,
}

impl<'a> EnumAccess<'a> for UnitVariant<'a> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'a>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let v = seed.deserialize(BorrowedStrDeserializer::<DeError>::new(self.text))?;
        Ok((v, self))
    }
}

impl<'a> VariantAccess<'a> for UnitVariant<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(de::Error::custom("expected a mapping for this value"))
    }

    fn tuple_variant<V: Visitor<'a>>(self, _len: usize, _v: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom("expected a list for this value"))
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, DeError> {
        Err(de::Error::custom("expected a mapping for this value"))
    }
}

/// A value together with where it was written (position and key path).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned<T> {
    pub value: T,
    pub mark: Mark,
    pub path: String,
}

impl<T> Spanned<T> {
    /// A problem about this value.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem::new(self.mark, self.path.clone(), message)
    }
}

/// The struct name by which [`NodeDe`] recognises a `Spanned` request (the
/// same trick the `toml` crate uses; no other deserializer is involved).
const SPANNED: &str = "$__kt_config_spanned";
const SPANNED_FIELDS: &[&str] = &["$__line", "$__column", "$__path", "$__value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value with its position")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let mut line = 0usize;
                let mut column = 0usize;
                let mut path = String::new();
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "$__line" => line = map.next_value()?,
                        "$__column" => column = map.next_value()?,
                        "$__path" => path = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::custom("internal: no spanned value"))?;
                Ok(Spanned {
                    value,
                    mark: Mark::new(line, column),
                    path,
                })
            }
        }
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, V(PhantomData))
    }
}

/// Hands a `Spanned` visitor the node's line, column, path and value.
struct SpannedDe<'a> {
    de: Option<NodeDe<'a>>,
    step: usize,
}

impl<'a> MapAccess<'a> for SpannedDe<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(key) = SPANNED_FIELDS.get(self.step) else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        self.step += 1;
        let Some(de) = &self.de else {
            return Err(de::Error::custom("internal: spanned value read twice"));
        };
        match self.step {
            1 => seed.deserialize((de.node.mark.line as u64).into_deserializer()),
            2 => seed.deserialize((de.node.mark.column as u64).into_deserializer()),
            3 => seed.deserialize(de.path.clone().into_deserializer()),
            _ => match self.de.take() {
                Some(de) => seed.deserialize(de),
                None => Err(de::Error::custom("internal: spanned value read twice")),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::yaml;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be deserialized
    struct Inner {
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        Block,
        Log,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: Spanned<String>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        free: BTreeMap<String, String>,
    }

    fn read<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Problem>) {
        let root = yaml::parse(text).unwrap().unwrap();
        let sink = Sink::default();
        let v = from_node::<T>(&root, "", &sink, &[]);
        (v, sink.into_inner())
    }

    #[test]
    fn unknown_keys_at_every_depth_are_all_reported() {
        let (v, problems) = read::<Outer>(
            "name: x\nbogus: 1\ninner:\n  flag: true\n  flg: true\nlist:\n  - count: 2\n    cuont: 3\n",
        );
        let v = v.unwrap();
        assert!(v.inner.unwrap().flag);
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.mark.line, p.mark.column, p.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, 1, "bogus"),
                (5, 3, "inner.flg"),
                (8, 5, "list[0].cuont")
            ]
        );
        assert!(
            problems[1].message.contains("did you mean `flag`"),
            "{problems:?}"
        );
    }

    #[test]
    fn value_errors_point_at_the_value() {
        let (v, problems) = read::<Outer>("name: x\ninner:\n  count: -1\n");
        assert!(v.is_none());
        assert_eq!(problems.len(), 1);
        let p = &problems[0];
        assert_eq!((p.mark, p.path.as_str()), (Mark::new(3, 10), "inner.count"));
        assert_eq!(p.message, "expected u32, found integer `-1`");

        let (_, problems) = read::<Outer>("name: x\nlist:\n  - mode: blok\n");
        let p = &problems[0];
        assert_eq!(
            (p.mark, p.path.as_str()),
            (Mark::new(3, 11), "list[0].mode")
        );
        assert_eq!(
            p.message,
            "unknown value `blok` (did you mean `block`?), expected one of block, log"
        );

        let (_, problems) = read::<Outer>("name: x\ninner:\n  flag: yes\n");
        assert_eq!(
            problems[0].message,
            "expected a boolean, found string \"yes\""
        );
    }

    #[test]
    fn missing_keys_point_at_the_mapping() {
        let (_, problems) = read::<Outer>("inner:\n  flag: true\n");
        assert_eq!(problems[0].message, "missing key `name`");
        assert_eq!(problems[0].mark, Mark::new(1, 1));
    }

    #[test]
    fn spanned_and_scalar_text() {
        let (v, problems) = read::<Outer>("free: {a: 1.0}\nname: 2024\n");
        assert!(problems.is_empty(), "{problems:?}");
        let v = v.unwrap();
        assert_eq!(v.name.value, "2024");
        assert_eq!(
            (v.name.mark, v.name.path.as_str()),
            (Mark::new(2, 7), "name")
        );
        assert_eq!(v.free["a"], "1.0");
    }

    #[test]
    fn null_sections_read_as_empty() {
        let (v, problems) = read::<Outer>("name: x\ninner:\nlist:\n");
        assert!(problems.is_empty(), "{problems:?}");
        let v = v.unwrap();
        // `inner:` is an Option: null means absent.
        assert!(v.inner.is_none());
        assert!(v.list.is_empty());
    }
}
