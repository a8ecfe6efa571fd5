//! Bounds on JSON a guest hands the host: how deeply it nests. serde_json refuses to parse
//! past 128 levels, so a value accepted at 125 levels and then stored inside a larger document
//! (a checkpoint) would no longer parse when the host reads it back: a poison pill for the
//! restart. Every value the host keeps is held well inside that bound where it is accepted.

use serde_json::Value;

/// How deeply an output event may nest.
pub(crate) const MAX_OUTPUT_DEPTH: usize = 64;

/// Ok when `value` nests at most `max` levels of arrays and objects, else its depth.
pub(crate) fn check_depth(value: &Value, max: usize) -> Result<(), usize> {
    let depth = depth(value);
    if depth <= max { Ok(()) } else { Err(depth) }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How deeply the JSON text `bytes` nests (arrays and objects), read without parsing it: what
/// `emit` checks before it keeps an output.
pub(crate) fn text_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_and_skips_strings() {
        assert_eq!(text_depth(br#"1"#), 0);
        assert_eq!(text_depth(br#"[[{"a":[1]}]]"#), 4);
        assert_eq!(text_depth(br#"["[[[\"]]]", {"b": "{{"}]"#), 2);
        let nested: Value = serde_json::from_str(&format!("{}{}", "[".repeat(40), "]".repeat(40))).expect("json");
        assert_eq!(check_depth(&nested, 32), Err(40));
        assert_eq!(check_depth(&nested, 40), Ok(()));
    }
}
