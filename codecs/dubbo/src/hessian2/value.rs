//! A materialised Hessian 2 value, for tests, tools and demo backends. The proxy
//! itself never builds these: it skips values.

/// One Hessian 2 value as read by [`super::Reader::read_value`] and written by
/// [`super::Writer::write_value`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `N`.
    Null,
    /// `T` / `F`.
    Bool(bool),
    /// A 32-bit int (any int form).
    Int(i32),
    /// A 64-bit long (any long form).
    Long(i64),
    /// A double (any double form).
    Double(f64),
    /// A date, milliseconds since the epoch.
    Date(i64),
    /// A string.
    String(String),
    /// Binary data.
    Binary(Vec<u8>),
    /// A variable-length list (`U` typed, `W` untyped), ended by `Z`.
    List {
        /// The type name (`#n` for a type reference when read), if typed.
        ty: Option<String>,
        /// The elements.
        items: Vec<Value>,
    },
    /// A fixed-length list (`V`/`X`, or the short `70`-`7f` forms).
    FixedList {
        /// The type name (`#n` for a type reference when read), if typed.
        ty: Option<String>,
        /// The elements.
        items: Vec<Value>,
    },
    /// A map (`M` typed, `H` untyped).
    Map {
        /// The type name (`#n` for a type reference when read), if typed.
        ty: Option<String>,
        /// The entries in wire order.
        entries: Vec<(Value, Value)>,
    },
    /// An object of a class definition (written with its definition the first time).
    Object {
        /// The class name.
        class: String,
        /// Field names and values, in definition order.
        fields: Vec<(String, Value)>,
    },
    /// A reference to the n-th earlier list, map or object.
    Ref(u32),
}

impl Value {
    /// Shorthand for a string value.
    pub fn str(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, if this is a map.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map { entries, .. } => Some(entries),
            _ => None,
        }
    }

    /// Looks a string key up in a map (first match).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lookup_finds_string_keys() {
        let m = Value::Map {
            ty: None,
            entries: vec![
                (Value::Int(1), Value::Null),
                (Value::str("k"), Value::Bool(true)),
            ],
        };
        assert_eq!(m.get("k"), Some(&Value::Bool(true)));
        assert_eq!(m.get("x"), None);
        assert_eq!(Value::Null.get("k"), None);
    }
}
