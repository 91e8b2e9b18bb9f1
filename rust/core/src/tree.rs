//! The header's tree (FORMAT.md section 4): its structural rules, checked once, here.
//!
//! A tree node is a leaf index or a map tagged by `t`; [`check`] walks the tree of a decoded header
//! and checks every rule a reader in any language can check without interpreting static values or
//! resolving class names: known tags, the required keys of each tag and their types, `k`/`c` and
//! `keys`/`c` of equal length, str keys and no repeated key in every map of the tree (static
//! values included), `static` maps with str keys, and every leaf record referenced exactly once.
//! What static values mean, which classes names resolve to and whether decoded dict keys are
//! distinct is the business of the reader that builds values (eqx_msg's Python layer).

use crate::error::{Error, Result};
use crate::header::{check_unique, map_key};
use crate::msgpack::{Cursor, RawValue, Token};

/// The `t` of each kind of tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `None`.
    None,
    /// A non-array leaf stored inline (`v`, optional `p`).
    Value,
    /// A list (`c`).
    List,
    /// A tuple (`c`).
    Tuple,
    /// A dict (`k`, `c`).
    Dict,
    /// A `collections.OrderedDict` (`k`, `c`).
    OrderedDict,
    /// A `collections.defaultdict` (`factory`, `k`, `c`).
    DefaultDict,
    /// A namedtuple (`cls`, optional `keys`, `c`).
    NamedTuple,
    /// Any other registered pytree node (`cls`, `aux` or `static`, optional `keys`, `c`).
    Node,
    /// A pydantic model (`cls`, `static`: its inline fields, `keys`: `.field` of each child, `c`).
    Model,
}

impl Tag {
    /// Every tag, in the order of FORMAT.md's table.
    pub const ALL: [Tag; 10] = [
        Tag::None,
        Tag::Value,
        Tag::List,
        Tag::Tuple,
        Tag::Dict,
        Tag::OrderedDict,
        Tag::DefaultDict,
        Tag::NamedTuple,
        Tag::Node,
        Tag::Model,
    ];

    /// The tag as the header spells it.
    pub fn name(self) -> &'static str {
        match self {
            Tag::None => "none",
            Tag::Value => "value",
            Tag::List => "list",
            Tag::Tuple => "tuple",
            Tag::Dict => "dict",
            Tag::OrderedDict => "ordereddict",
            Tag::DefaultDict => "defaultdict",
            Tag::NamedTuple => "namedtuple",
            Tag::Node => "node",
            Tag::Model => "model",
        }
    }

    /// The tag named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The keys of a tree node that some tag interprets (any other key is ignored).
const NODE_KEYS: [&str; 10] = [
    "t", "c", "k", "v", "p", "factory", "cls", "keys", "aux", "static",
];
const T: usize = 0;
const C: usize = 1;
const K: usize = 2;
const V: usize = 3;
const P: usize = 4;
const FACTORY: usize = 5;
const CLS: usize = 6;
const KEYS: usize = 7;
const AUX: usize = 8;
const STATIC: usize = 9;

/// The level of the header's `tree` value (the header map is level 1).
const TREE_LEVEL: usize = 2;

/// Checks the structural rules of `tree`, the tree of a header with `leaves` leaf records.
pub fn check(tree: RawValue<'_>, leaves: usize) -> Result<()> {
    let mut walk = Walk {
        seen: vec![false; leaves],
        count: 0,
        at: Vec::new(),
    };
    let mut c = Cursor::at(tree.as_bytes(), 0);
    walk.node(&mut c, TREE_LEVEL)?;
    if walk.count != leaves {
        let missing = walk.seen.iter().position(|s| !s).unwrap_or(0);
        return Err(Error::BadTree {
            node: "tree".into(),
            reason: format!(
                "it references {} of the {leaves} leaf records; leaf record {missing} is not \
                 referenced (each is referenced exactly once)",
                walk.count
            ),
        });
    }
    Ok(())
}

/// A walk of the tree: which leaf records it has met, and where it is (for errors).
struct Walk {
    seen: Vec<bool>,
    count: usize,
    /// The child indices from the root to the node being checked.
    at: Vec<usize>,
}

impl Walk {
    /// Where the walk is, as `tree.c[0].c[3]`.
    #[cold]
    fn location(&self) -> String {
        let mut s = String::from("tree");
        for i in &self.at {
            s.push_str(&format!(".c[{i}]"));
        }
        s
    }

    /// A map of the tree named in errors: the node, or one of its fields (`field` non-empty).
    #[cold]
    fn map_name(&self, field: &str) -> String {
        let node = format!("header field \"tree\", node {}", self.location());
        if field.is_empty() {
            node
        } else {
            format!("{node}, field {field:?}")
        }
    }

    #[cold]
    fn bad(&self, reason: String) -> Error {
        Error::BadTree {
            node: self.location(),
            reason,
        }
    }

    /// One node at nesting `level`: a leaf index, or a tagged map.
    fn node(&mut self, c: &mut Cursor<'_>, level: usize) -> Result<()> {
        match c.next()? {
            Token::UInt(i) => self.leaf(i),
            Token::Map(n) => self.map(c, n, level),
            other => Err(self.bad(format!(
                "a tree node is a leaf index (a non-negative int) or a map, not {}",
                other.describe()
            ))),
        }
    }

    fn leaf(&mut self, i: u64) -> Result<()> {
        let Some(seen) = usize::try_from(i).ok().and_then(|i| self.seen.get_mut(i)) else {
            let n = self.seen.len();
            return Err(self.bad(format!(
                "leaf index {i} is out of range: the file has {n} leaf records"
            )));
        };
        if std::mem::replace(seen, true) {
            return Err(self.bad(format!(
                "leaf record {i} is referenced a second time (each is referenced exactly once)"
            )));
        }
        self.count += 1;
        Ok(())
    }

    /// A map node of `n` entries at `level`: its keys read, then its tag's rules checked.
    fn map(&mut self, c: &mut Cursor<'_>, n: usize, level: usize) -> Result<()> {
        let buf = c.buf();
        let mut at: [Option<usize>; NODE_KEYS.len()] = [None; NODE_KEYS.len()];
        let mut unknown: Vec<&str> = Vec::new();
        for _ in 0..n {
            let key = map_key(c, || self.map_name(""))?;
            match NODE_KEYS.iter().position(|k| *k == key) {
                Some(k) if at[k].is_some() => return Err(self.duplicate(key)),
                Some(k) => at[k] = Some(c.pos()),
                None => unknown.push(key),
            }
            if at[C] == Some(c.pos()) {
                c.skip(level + 1)?; // the children are walked as nodes below
            } else {
                values(c, level + 1, &|| self.map_name(""))?;
            }
        }
        check_unique(&mut unknown, || self.map_name(""))?;

        let tag = match at[T].map(|p| Cursor::at(buf, p).next()) {
            None => return Err(self.bad("it has no \"t\" (its node type)".into())),
            Some(t) => match t? {
                Token::Str(s) => Tag::from_name(s)
                    .ok_or_else(|| self.bad(format!("unknown tree node type {s:?}")))?,
                other => {
                    return Err(self.bad(format!(
                        "\"t\" (the node type) must be a str, not {}",
                        other.describe()
                    )))
                }
            },
        };
        // A nil value of an optional key counts as absent (FORMAT.md section 2).
        let present =
            |k: usize| at[k].filter(|&p| !matches!(Cursor::at(buf, p).next(), Ok(Token::Nil)));
        let require = |k: usize| {
            at[k].ok_or_else(|| {
                self.bad(format!("a {:?} node has no {:?}", tag.name(), NODE_KEYS[k]))
            })
        };
        let array = |k: usize, p: usize| -> Result<usize> {
            match Cursor::at(buf, p).next()? {
                Token::Array(len) => Ok(len),
                other => Err(self.bad(format!(
                    "{:?} of a {:?} node is an array, not {}",
                    NODE_KEYS[k],
                    tag.name(),
                    other.describe()
                ))),
            }
        };
        if matches!(tag, Tag::None | Tag::Value) {
            if let Some(p) = at[C] {
                // Not children here, but a map in it still may not repeat a key.
                values(&mut Cursor::at(buf, p), level + 1, &|| self.map_name(""))?;
            }
        }
        match tag {
            Tag::None => return Ok(()),
            Tag::Value => {
                require(V)?;
                if let Some(p) = present(P) {
                    let found = Cursor::at(buf, p).next()?;
                    if !matches!(found, Token::Str(_)) {
                        return Err(self.bad(format!(
                            "a value node's key path \"p\" must be a str, not {}",
                            found.describe()
                        )));
                    }
                }
                return Ok(());
            }
            Tag::List | Tag::Tuple => {}
            Tag::Dict | Tag::OrderedDict | Tag::DefaultDict => {
                if tag == Tag::DefaultDict {
                    require(FACTORY)?;
                }
                let keys = array(K, require(K)?)?;
                let children = array(C, require(C)?)?;
                if keys != children {
                    return Err(self.bad(format!(
                        "a {:?} node has {keys} entries in \"k\" but {children} children",
                        tag.name()
                    )));
                }
            }
            Tag::NamedTuple | Tag::Node | Tag::Model => {
                match Cursor::at(buf, require(CLS)?).next()? {
                    Token::Str(_) => {}
                    other => {
                        return Err(self.bad(format!(
                            "\"cls\" (a registry name) is a str, not {}",
                            other.describe()
                        )))
                    }
                }
                if tag == Tag::Node {
                    let stat = present(STATIC);
                    if at[AUX].is_some() == stat.is_some() {
                        return Err(self.bad(
                            "a \"node\" node holds either \"aux\" or \"static\", not both or \
                             neither"
                                .into(),
                        ));
                    }
                    if let Some(p) = stat {
                        self.static_fields(buf, p)?;
                    }
                }
                if tag == Tag::Model {
                    self.static_fields(buf, require(STATIC)?)?;
                    array(KEYS, require(KEYS)?)?; // (required here: nil is not absent)
                }
                let children = array(C, require(C)?)?;
                if let Some(p) = present(KEYS) {
                    let mut k = Cursor::at(buf, p);
                    let len = array(KEYS, p)?;
                    k.next()?;
                    for _ in 0..len {
                        if !matches!(k.next()?, Token::Str(_)) {
                            return Err(self.bad("\"keys\" must hold str only".into()));
                        }
                    }
                    if len != children {
                        return Err(self.bad(format!(
                            "a {:?} node has {len} entries in \"keys\" but {children} children",
                            tag.name()
                        )));
                    }
                }
            }
        }
        let mut children = Cursor::at(buf, require(C)?);
        let len = array(C, children.pos())?;
        children.next()?;
        for i in 0..len {
            self.at.push(i);
            self.node(&mut children, level + 2)?;
            self.at.pop();
        }
        Ok(())
    }

    /// A `node`'s `static`: a map of str field names.
    fn static_fields(&self, buf: &[u8], p: usize) -> Result<()> {
        let mut s = Cursor::at(buf, p);
        let n = match s.next()? {
            Token::Map(n) => n,
            other => {
                return Err(self.bad(format!(
                    "\"static\" is a map of field names to static values, not {}",
                    other.describe()
                )))
            }
        };
        for _ in 0..n {
            map_key(&mut s, || self.map_name("static"))?;
            s.skip(TREE_LEVEL)?; // (depth was checked when the header was decoded)
        }
        Ok(()) // (a repeated name is refused with every map of the tree's values: `values`)
    }

    #[cold]
    fn duplicate(&self, key: &str) -> Error {
        Error::DuplicateKey {
            map: self.map_name(""),
            key: key.to_owned(),
        }
    }
}

/// Skips one value at `level`, checking that no map in it repeats a key (str keys compared as
/// strings, other keys by their encoded bytes). Tree nodes are skipped this way too: their
/// children are checked as nodes afterwards.
fn values(c: &mut Cursor<'_>, level: usize, location: &dyn Fn() -> String) -> Result<()> {
    let n = match c.next()? {
        Token::Array(n) => {
            for _ in 0..n {
                values(c, level + 1, location)?;
            }
            return Ok(());
        }
        Token::Map(n) => n,
        _ => return Ok(()),
    };
    let buf = c.buf();
    let mut strs: Vec<&str> = Vec::new();
    let mut others: Vec<&[u8]> = Vec::new();
    for _ in 0..n {
        let start = c.pos();
        match c.next()? {
            Token::Str(s) => strs.push(s),
            t => {
                c.skip_items(&t, level + 1)?;
                others.push(&buf[start..c.pos()]);
            }
        }
        values(c, level + 1, location)?;
    }
    let within = || format!("a map inside {}", location());
    check_unique(&mut strs, within)?;
    others.sort_unstable();
    if others.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::DuplicateKey {
            map: within(),
            key: "(a non-str key)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::Header;
    use rmpv::Value;

    fn node(entries: Vec<(&str, Value)>) -> Value {
        map(entries)
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn leaves(ix: &[u64]) -> Value {
        arr(ix.iter().map(|&i| Value::from(i)).collect())
    }

    /// The verdict on `tree` as the tree of the three-leaf header.
    fn verdict(tree: Value) -> Result<()> {
        let bytes = enc(&with_root(good_header(), "tree", tree));
        Header::decode_validated(&bytes).map(|_| ())
    }

    fn refused(tree: Value, says: &str) {
        let e = verdict(tree.clone()).expect_err(&format!("accepted {tree}"));
        assert_eq!(e.kind(), "HeaderError", "{tree}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(says), "{tree}: {msg:?} does not say {says:?}");
    }

    #[test]
    fn tags_round_trip_their_names() {
        for t in Tag::ALL {
            assert_eq!(Tag::from_name(t.name()), Some(t));
        }
        assert_eq!(Tag::from_name("leaf"), None);
    }

    #[test]
    fn well_formed_trees_pass() {
        let list = |c: Value| node(vec![("t", s("list")), ("c", c)]);
        let ok = [
            list(leaves(&[0, 1, 2])),
            node(vec![("c", leaves(&[2, 1, 0])), ("t", s("tuple"))]), // `t` need not come first
            node(vec![
                ("t", s("dict")),
                ("k", arr(vec![s("a"), Value::from(1), Value::Nil])),
                ("c", leaves(&[0, 1, 2])),
            ]),
            node(vec![
                ("t", s("defaultdict")),
                ("factory", Value::Nil),
                ("k", arr(vec![s("a")])),
                ("c", arr(vec![list(leaves(&[0, 1, 2]))])),
            ]),
            node(vec![
                ("t", s("node")),
                ("cls", s("m.M")),
                (
                    "static",
                    map(vec![("n", Value::from(8)), ("f", Value::Nil)]),
                ),
                ("aux", Value::Nil).clone(),
            ]),
            node(vec![
                ("t", s("node")),
                ("cls", s("m.M")),
                ("aux", Value::Nil), // nil is a value here: the flatten data None
                ("static", Value::Nil), // nil counts as absent
                ("keys", arr(vec![s(".a"), s(".b"), s(".c")])),
                ("c", leaves(&[0, 1, 2])),
            ]),
            node(vec![
                ("t", s("namedtuple")),
                ("cls", s("m.P")),
                ("keys", Value::Nil),
                ("future", map(vec![("x", Value::from(1))])), // unknown keys are ignored
                ("c", leaves(&[0, 1, 2])),
            ]),
            list(arr(vec![
                node(vec![("t", s("none"))]),
                node(vec![
                    ("t", s("value")),
                    ("v", Value::from(3)),
                    ("p", Value::Nil),
                ]),
                node(vec![("t", s("value")), ("v", Value::Nil), ("p", s("[1]"))]),
                Value::from(1),
                list(leaves(&[0, 2])),
            ])),
        ];
        // (the fifth has no `c`: refused below; every other one passes)
        for (i, tree) in ok.into_iter().enumerate() {
            let v = verdict(tree.clone());
            if i == 4 {
                assert!(v.is_err());
            } else {
                v.unwrap_or_else(|e| panic!("{tree}: {e}"));
            }
        }
    }

    #[test]
    fn leaf_references() {
        let list = |c: Value| node(vec![("t", s("list")), ("c", c)]);
        refused(
            list(leaves(&[0, 1, 5])),
            "leaf index 5 is out of range: the file has 3",
        );
        refused(list(leaves(&[0, 1, u64::MAX])), "is out of range");
        refused(
            list(leaves(&[0, 1, 1, 2])),
            "leaf record 1 is referenced a second time",
        );
        refused(
            list(leaves(&[0, 2])),
            "references 2 of the 3 leaf records; leaf record 1 is not",
        );
        refused(list(arr(vec![Value::from(-1)])), "not int -1");
        refused(
            list(arr(vec![s("0")])),
            "a leaf index (a non-negative int) or a map",
        );
        refused(list(arr(vec![Value::F64(0.0)])), "not float 0");
        refused(list(arr(vec![Value::Nil])), "not nil");
        refused(list(arr(vec![leaves(&[0, 1, 2])])), "not array of 3 items");
        // The location is the child indices from the root.
        let nested = list(arr(vec![Value::from(0), list(leaves(&[1, 1]))]));
        refused(
            nested,
            "header field \"tree\", node tree.c[1].c[1]: leaf record 1",
        );
    }

    #[test]
    fn tags_and_required_keys() {
        let all = leaves(&[0, 1, 2]);
        refused(node(vec![("c", all.clone())]), "node tree: it has no \"t\"");
        refused(
            node(vec![("t", Value::from(1))]),
            "\"t\" (the node type) must be a str, not int 1",
        );
        refused(
            node(vec![("t", s("leaf")), ("i", Value::from(0))]),
            "unknown tree node type \"leaf\"",
        );
        refused(node(vec![("t", s("list"))]), "a \"list\" node has no \"c\"");
        refused(
            node(vec![("t", s("tuple")), ("c", Value::Nil)]),
            "\"c\" of a \"tuple\" node is an array, not nil",
        );
        refused(
            node(vec![("t", s("dict")), ("c", all.clone())]),
            "a \"dict\" node has no \"k\"",
        );
        refused(
            node(vec![
                ("t", s("ordereddict")),
                ("k", arr(vec![s("a")])),
                ("c", all.clone()),
            ]),
            "a \"ordereddict\" node has 1 entries in \"k\" but 3 children",
        );
        refused(
            node(vec![
                ("t", s("defaultdict")),
                ("k", arr(vec![])),
                ("c", arr(vec![])),
            ]),
            "a \"defaultdict\" node has no \"factory\"",
        );
        refused(
            node(vec![("t", s("value"))]),
            "a \"value\" node has no \"v\"",
        );
        refused(
            node(vec![
                ("t", s("value")),
                ("v", Value::from(1)),
                ("p", Value::from(1)),
            ]),
            "a value node's key path \"p\" must be a str, not int 1",
        );
        let custom = |extra: Vec<(&'static str, Value)>| {
            let mut e = vec![("t", s("node")), ("c", leaves(&[0, 1, 2]))];
            e.extend(extra);
            node(e)
        };
        refused(
            custom(vec![("aux", Value::Nil)]),
            "a \"node\" node has no \"cls\"",
        );
        refused(
            custom(vec![("cls", Value::from(3)), ("aux", Value::Nil)]),
            "\"cls\" (a registry name) is a str",
        );
        refused(
            custom(vec![("cls", s("m.M"))]),
            "either \"aux\" or \"static\", not both or neither",
        );
        let stat = map(vec![("n", Value::from(1))]);
        refused(
            custom(vec![
                ("cls", s("m.M")),
                ("aux", Value::Nil),
                ("static", stat.clone()),
            ]),
            "not both or neither",
        );
        refused(
            custom(vec![("cls", s("m.M")), ("static", arr(vec![]))]),
            "\"static\" is a map of field names",
        );
        let bad = Value::Map(vec![(Value::from(1), Value::Nil)]);
        refused(
            custom(vec![("cls", s("m.M")), ("static", bad)]),
            "field \"static\" has a non-string key",
        );
        let twice = Value::Map(vec![(s("n"), Value::Nil), (s("n"), Value::Nil)]);
        refused(
            custom(vec![("cls", s("m.M")), ("static", twice)]),
            "node tree has the key \"n\" more than once",
        );
        refused(
            custom(vec![
                ("cls", s("m.M")),
                ("aux", Value::Nil),
                ("keys", arr(vec![s(".a"), Value::from(1), s(".c")])),
            ]),
            "\"keys\" must hold str only",
        );
        refused(
            custom(vec![
                ("cls", s("m.M")),
                ("aux", Value::Nil),
                ("keys", arr(vec![s(".a")])),
            ]),
            "a \"node\" node has 1 entries in \"keys\" but 3 children",
        );
        refused(
            node(vec![
                ("t", s("namedtuple")),
                ("cls", s("m.P")),
                ("keys", s("a")),
                ("c", leaves(&[0, 1, 2])),
            ]),
            "\"keys\" of a \"namedtuple\" node is an array, not str",
        );
    }

    #[test]
    fn a_model_node_has_its_class_inline_fields_and_child_keys() {
        let model = |extra: Vec<(&'static str, Value)>| {
            let mut e = vec![("t", s("model")), ("c", leaves(&[0, 1, 2]))];
            e.extend(extra);
            node(e)
        };
        let keys = arr(vec![s(".a"), s(".b"), s(".c")]);
        let fields = map(vec![("lr", Value::F64(0.1))]);
        verdict(model(vec![
            ("cls", s("m.Config")),
            ("static", fields.clone()),
            ("keys", keys.clone()),
        ]))
        .unwrap();
        refused(
            model(vec![("static", fields.clone()), ("keys", keys.clone())]),
            "a \"model\" node has no \"cls\"",
        );
        refused(
            model(vec![("cls", s("m.C")), ("keys", keys.clone())]),
            "a \"model\" node has no \"static\"",
        );
        refused(
            model(vec![("cls", s("m.C")), ("static", fields.clone())]),
            "a \"model\" node has no \"keys\"",
        );
        refused(
            model(vec![
                ("cls", s("m.C")),
                ("static", Value::Nil),
                ("keys", keys.clone()),
            ]),
            "\"static\" is a map of field names to static values, not nil",
        );
        refused(
            model(vec![
                ("cls", s("m.C")),
                ("static", fields),
                ("keys", arr(vec![s(".a")])),
            ]),
            "a \"model\" node has 1 entries in \"keys\" but 3 children",
        );
        refused(
            model(vec![
                ("cls", s("m.C")),
                ("static", map(vec![])),
                ("keys", Value::Nil),
            ]),
            "\"keys\" of a \"model\" node is an array, not nil",
        );
    }

    #[test]
    fn no_map_in_the_tree_repeats_a_key() {
        let all = leaves(&[0, 1, 2]);
        let twice_t = Value::Map(vec![
            (s("t"), s("list")),
            (s("t"), s("list")),
            (s("c"), all.clone()),
        ]);
        refused(twice_t, "node tree has the key \"t\" more than once");
        let twice_unknown = Value::Map(vec![
            (s("t"), s("list")),
            (s("x"), Value::Nil),
            (s("x"), Value::Nil),
            (s("c"), all.clone()),
        ]);
        refused(twice_unknown, "has the key \"x\" more than once");
        refused(
            Value::Map(vec![
                (s("t"), s("list")),
                (Value::from(1), Value::Nil),
                (s("c"), all.clone()),
            ]),
            "has a non-string key (int 1)",
        );
        // Inside static values too: a tagged value's keys, and maps with other keys.
        let tagged = Value::Map(vec![(s("$"), s("ref")), (s("$"), s("dict"))]);
        let value = |v: Value| {
            node(vec![
                ("t", s("list")),
                (
                    "c",
                    arr(vec![
                        Value::from(0),
                        Value::from(1),
                        Value::from(2),
                        node(vec![("t", s("value")), ("v", v)]),
                    ]),
                ),
            ])
        };
        refused(
            value(arr(vec![tagged])),
            "a map inside header field \"tree\", node tree.c[3] has the key \"$\" more than once",
        );
        let ints = Value::Map(vec![
            (Value::from(1), Value::Nil),
            (Value::from(1), Value::Nil),
        ]);
        refused(
            value(ints),
            "has the key \"(a non-str key)\" more than once",
        );
        let in_c = Value::Map(vec![(s("a"), Value::Nil), (s("a"), Value::Nil)]);
        let none = node(vec![("t", s("none")), ("c", arr(vec![in_c]))]);
        let tree = node(vec![
            ("t", s("list")),
            (
                "c",
                arr(vec![Value::from(0), Value::from(1), Value::from(2), none]),
            ),
        ]);
        refused(tree, "has the key \"a\" more than once");
        verdict(value(Value::Map(vec![
            (Value::from(1), Value::Nil),
            (Value::from(2), Value::Nil),
        ])))
        .unwrap();
    }
}
