//! One source of truth for the declarative API: the custom resources' schemas are the runtime
//! configuration's own (descriptions, ranges, enums and defaults from `keygate-config`) with
//! field names in camelCase, and a resource's spec becomes configuration by renaming them back.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// `snake_case` to `camelCase`.
pub fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `camelCase` to `snake_case`.
pub fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renames every object key in a value (defaults, specs).
fn rename_keys(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut val) in old {
                rename_keys(&mut val, f);
                o.insert(f(&k), val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_keys(x, f)),
        _ => {}
    }
}

/// Renames the property names (and the keys inside defaults) of a schema to camelCase.
fn camel_schema_value(v: &mut Value) {
    let Value::Object(o) = v else { return };
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        let old = std::mem::take(props);
        for (k, mut sub) in old {
            camel_schema_value(&mut sub);
            props.insert(camel(&k), sub);
        }
    }
    if let Some(Value::Array(req)) = o.get_mut("required") {
        for r in req.iter_mut() {
            if let Value::String(s) = r {
                *s = camel(s);
            }
        }
    }
    if let Some(d) = o.get_mut("default") {
        rename_keys(d, &camel);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = o.get_mut(key) {
            camel_schema_value(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = o.get_mut(key) {
            subs.iter_mut().for_each(camel_schema_value);
        }
    }
}

/// The schema of configuration type `T`, inline, with camelCase names and without the
/// properties in `drop` (filled from elsewhere, such as the resource's name).
pub fn camel_schema<T: JsonSchema>(generator: &mut SchemaGenerator, drop: &[&str]) -> Schema {
    let mut value = generator.subschema_for::<T>().to_value();
    camel_schema_value(&mut value);
    if let Value::Object(o) = &mut value {
        if let Some(Value::Object(props)) = o.get_mut("properties") {
            for d in drop {
                props.remove(&camel(d));
            }
        }
        if let Some(Value::Array(req)) = o.get_mut("required") {
            req.retain(|r| {
                r.as_str()
                    .is_none_or(|r| !drop.contains(&snake(r).as_str()))
            });
        }
    }
    Schema::try_from(value).unwrap_or_default()
}

/// Adds properties (with their schemas and descriptions) and CEL rules to an object schema.
pub fn extend(
    mut schema: Schema,
    properties: Vec<(&str, Schema)>,
    rules: &[(&str, &str)],
) -> Schema {
    if let Some(o) = schema.as_object_mut() {
        let props = o
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = props {
            for (name, s) in properties {
                props.insert(name.to_owned(), s.to_value());
            }
        }
        if !rules.is_empty() {
            let list: Vec<Value> = rules
                .iter()
                .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
                .collect();
            o.insert("x-kubernetes-validations".into(), Value::Array(list));
        }
    }
    schema
}

/// A string property with a description (and a pattern, when given).
pub fn string(description: &str, pattern: Option<&str>) -> Schema {
    let mut v = serde_json::json!({"type": "string", "description": description});
    if let Some(p) = pattern {
        v["pattern"] = Value::String(p.to_owned());
    }
    Schema::try_from(v).unwrap_or_default()
}

/// The configuration value a camelCase spec (or part of one) stands for.
pub fn to_config<T: DeserializeOwned>(spec: &Value) -> Result<T, String> {
    let mut v = spec.clone();
    rename_keys(&mut v, &snake);
    serde_json::from_value(v).map_err(|e| camel_message(&e.to_string()))
}

/// A configuration value as a camelCase spec (for examples and round trips).
pub fn to_spec<T: serde::Serialize>(config: &T) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    rename_keys(&mut v, &camel);
    v
}

/// Names in an error message back in camelCase (`unknown field \`lock_aftr\``).
fn camel_message(msg: &str) -> String {
    let mut out = String::new();
    for (i, part) in msg.split('`').enumerate() {
        if i % 2 == 1 {
            out.push('`');
            out.push_str(&camel(part));
            out.push('`');
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_both_ways() {
        assert_eq!(camel("ip_lock_after"), "ipLockAfter");
        assert_eq!(snake("ipLockAfter"), "ip_lock_after");
        assert_eq!(camel("mfa"), "mfa");
        for n in [
            "turnstile_verify_url",
            "refresh_reuse_grace_seconds",
            "login_codes",
        ] {
            assert_eq!(snake(&camel(n)), n);
        }
    }

    #[test]
    fn the_default_policy_round_trips_through_its_spec() {
        let policy = keygate_config::TenantPolicy::default();
        let spec = to_spec(&policy);
        assert!(spec["lockout"]["lockAfter"].is_number(), "{spec}");
        let back: keygate_config::TenantPolicy = to_config(&spec).unwrap();
        assert_eq!(back, policy);
        let err = to_config::<keygate_config::TenantPolicy>(
            &serde_json::json!({"lockout": {"lockAftr": 3}}),
        )
        .unwrap_err();
        assert!(err.contains("`lockAftr`"), "{err}");
    }
}
