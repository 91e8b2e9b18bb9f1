//! Prints the header of an eqx_msg file as JSON, using only the Rust crate.
//!
//! `cargo run -p eqx_msg_core --example print_header -- FILE`
//!
//! The file is memory-mapped and fully validated first; a bad file prints the error on stderr
//! and exits with status 1. msgpack bin values print as `{"$bin": "<hex>"}`, ext values as
//! `{"$ext": [type, "<hex>"]}`, and non-string map keys are stringified.

use std::process::ExitCode;

use eqx_msg_core::rmpv::{self, Value};
use eqx_msg_core::{MappedFile, MAX_DEPTH};
use serde_json::{json, Map, Value as Json};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn float(x: f64) -> Json {
    serde_json::Number::from_f64(x).map_or_else(|| Json::String(x.to_string()), Json::Number)
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => i
            .as_u64()
            .map(Json::from)
            .or_else(|| i.as_i64().map(Json::from))
            .unwrap_or(Json::Null),
        Value::F32(x) => float(f64::from(*x)),
        Value::F64(x) => float(*x),
        Value::String(s) => Json::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => json!({ "$bin": hex(b) }),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => to_json(other).to_string(),
                };
                m.insert(key, to_json(v));
            }
            Json::Object(m)
        }
        Value::Ext(t, b) => json!({ "$ext": [t, hex(b)] }),
    }
}

fn run(path: &str) -> Result<Json, Box<dyn std::error::Error>> {
    let file = MappedFile::open(path)?;
    let reader = file.reader()?;
    // Decode the header again as a plain value, to print every key (known or not).
    let mut header = &reader.bytes()[reader.header_range()];
    let value = rmpv::decode::read_value_with_max_depth(&mut header, 2 * MAX_DEPTH + 3)?;
    Ok(to_json(&value))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, path] = args.as_slice() else {
        eprintln!("usage: print_header FILE");
        return ExitCode::from(2);
    };
    match run(path) {
        Ok(json) => match serde_json::to_string_pretty(&json) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
