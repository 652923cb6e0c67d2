//! A small JSON Schema checker covering what `schema/report-v1.json` and
//! `schema/openapi.yaml` use: type (incl. unions), enum, required, properties,
//! additionalProperties: false, items, and `$ref` within a document or to another file
//! of `schema/` (`report-v1.json`, `report-v1.json#/$defs/captured`).

use serde_json::Value;

/// A file of `schema/`, as JSON (YAML files are converted).
pub fn load(name: &str) -> Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if name.ends_with(".yaml") {
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

/// The schema a `$ref` names, and the document it lives in.
pub fn resolve(r: &str, root: &Value) -> (Value, Value) {
    let (file, frag) = r.split_once('#').unwrap_or((r, ""));
    let doc = if file.is_empty() {
        root.clone()
    } else {
        load(file)
    };
    let mut t = &doc;
    for seg in frag.split('/').filter(|s| !s.is_empty()) {
        t = &t[seg];
    }
    assert!(!t.is_null(), "unresolved $ref {r}");
    (t.clone(), doc)
}

/// Panics, naming the place, where `v` does not match `s`.
pub fn check(v: &Value, s: &Value, root: &Value, at: &str) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let (target, doc) = resolve(r, root);
        return check(v, &target, &doc, at);
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            _ => false,
        });
        assert!(ok, "{at}: {v} is not {types:?}");
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        assert!(e.contains(v), "{at}: {v} not in {e:?}");
    }
    if let Some(obj) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(obj.contains_key(r.as_str().unwrap()), "{at}: missing {r}");
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(val, ps, root, &format!("{at}.{k}")),
                None => assert!(
                    s.get("additionalProperties") != Some(&Value::Bool(false)),
                    "{at}: unexpected field {k}"
                ),
            }
        }
    }
    if let (Some(arr), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in arr.iter().enumerate() {
            check(x, items, root, &format!("{at}[{i}]"));
        }
    }
}
