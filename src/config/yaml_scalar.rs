//! What an untagged YAML scalar is (null, boolean, integer, number or string) and which
//! mapping keys count as the same key: the rules serde-saphyr 2.2 applies when the config is
//! read as untyped values (`deserialize_any` with `strict_booleans`), written out so that
//! `yaml.rs` can resolve scalars straight from the parser's events.
//!
//! The rules, in order, for a scalar without a tag (a tagged scalar never reaches here):
//!
//! 1. Quoted (`'…'`, `"…"`) and block (`|`, `>`) scalars are strings, whatever they say.
//! 2. A plain scalar that is empty, `~`, `null`, `Null` or `NULL` is null.
//! 3. `true`, `True`, `TRUE`, `false`, `False`, `FALSE` are booleans (YAML 1.2 core schema:
//!    `yes`, `on`, `y` stay strings).
//! 4. An upper-case radix prefix (`0X1F`, `-0B1`, `0O7`) and a signed NaN (`+.nan`, `-.NaN`)
//!    are strings.
//! 5. An integer that fits `i64` (with a leading `-`) or `u64` (otherwise), in decimal
//!    (no redundant leading zero: `007` is not one), `0x` hex, `0o` octal or `0b` binary,
//!    with an optional `+`, and single `_` between digits (`1_000`).
//! 6. Otherwise a number if Rust's `f64` parser takes it and it is finite (`1.5`, `1e3`,
//!    `.5`, `007`, `-00`, an integer too big for 64 bits); `.inf`, `-.Inf`, `.nan` and a
//!    literal overflowing `f64` (`1e999`) are an error (serde-saphyr rejects non-finite
//!    numbers in untyped values); alphabetic spellings Rust would take (`inf`, `nan`) are
//!    strings.
//! 7. Anything else is a string.
//!
//! Mapping keys, for serde-saphyr: two plain keys that parse as integers (up to 128 bits,
//! rule 5's syntax, upper-case prefixes too) are the same key when their values are (`0xB`
//! and `11`); other keys are the same when their text is (`a` and `"a"`), a null key (`~`)
//! being another key than the string `"~"`. `yaml.rs` flags a superset of these (by text,
//! by integer value whatever the style, any two null-like keys) and hands a flagged file
//! back to serde-saphyr, whose verdict and message stand.

/// The resolved value of an untagged scalar.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

/// A plain scalar resolves to a non-finite number, which serde-saphyr rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NonFinite;

/// Resolves a scalar without a tag (rules 1-7 above).
pub(super) fn resolve(value: &str, plain: bool) -> Result<Scalar, NonFinite> {
    if !plain {
        return Ok(Scalar::Str);
    }
    if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Scalar::Null);
    }
    let t = yaml_trim(value);
    match t {
        "true" | "True" | "TRUE" => return Ok(Scalar::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Scalar::Bool(false)),
        _ => {}
    }
    // Only a digit, a sign or a dot can start a number: skip the parsers for the rest.
    if !t
        .as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Ok(Scalar::Str);
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if matches!(unsigned.as_bytes(), [b'0', b'X' | b'O' | b'B', ..]) || is_signed_nan(t) {
        return Ok(Scalar::Str);
    }
    if t.starts_with('-') {
        if !leading_zero_decimal(t) {
            if let Some(v) = parse_int(t).filter(|v| i64::try_from(*v).is_ok()) {
                return Ok(Scalar::Int(v));
            }
        }
    } else if let Some(v) = parse_int(t).filter(|v| u64::try_from(*v).is_ok()) {
        return Ok(Scalar::Int(v));
    }
    match parse_float(t) {
        Some(v) if v.is_finite() => Ok(Scalar::Float(v)),
        Some(_) => Err(NonFinite),
        None => Ok(Scalar::Str),
    }
}

/// What makes two mapping keys the same key (see the module's last paragraph).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum KeyId<'a> {
    Int(bool, u128),
    Text(&'a str),
}

/// The integer identity of a key with text `text`, if it is spelled as an integer (a plain
/// key so spelled is compared by value).
pub(super) fn int_key(text: &str) -> Option<KeyId<'static>> {
    let (negative, magnitude) = parse_int_parts(yaml_trim(text))?;
    // Zero is never negative: `-0` and `0` are one key.
    Some(KeyId::Int(negative && magnitude != 0, magnitude))
}

/// serde-saphyr's trim before conversions: YAML spaces, tabs and line breaks.
fn yaml_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

fn is_signed_nan(t: &str) -> bool {
    t.strip_prefix(['+', '-'])
        .is_some_and(|u| matches!(u, ".nan" | ".NaN" | ".NAN"))
}

/// `0127`, `-007`, `+00`: a decimal integer spelled with a redundant leading zero.
fn leading_zero_decimal(t: &str) -> bool {
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Rule 5's integer syntax as an `i128` (`None` if it is not one or does not fit).
fn parse_int(t: &str) -> Option<i128> {
    let (negative, magnitude) = parse_int_parts(t)?;
    if negative {
        if magnitude == i128::MIN.unsigned_abs() {
            Some(i128::MIN)
        } else {
            i128::try_from(magnitude).ok().map(|m| -m)
        }
    } else {
        i128::try_from(magnitude).ok()
    }
}

/// Sign and magnitude of rule 5's integer syntax, up to 128 bits.
fn parse_int_parts(t: &str) -> Option<(bool, u128)> {
    let (negative, rest) = match t.strip_prefix('+') {
        Some(r) => (false, r),
        None => match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t),
        },
    };
    let (radix, digits) = if let Some(r) = rest.strip_prefix("0x").or(rest.strip_prefix("0X")) {
        (16, r)
    } else if let Some(r) = rest.strip_prefix("0o").or(rest.strip_prefix("0O")) {
        (8, r)
    } else if let Some(r) = rest.strip_prefix("0b").or(rest.strip_prefix("0B")) {
        (2, r)
    } else {
        if rest.starts_with('0') && rest != "0" {
            return None;
        }
        (10, rest)
    };
    let magnitude = parse_digits(digits, radix)?;
    if negative && magnitude > i128::MIN.unsigned_abs() {
        return None;
    }
    Some((negative, magnitude))
}

/// Digits in `radix` with single `_` separators between them (not first, not last).
fn parse_digits(digits: &str, radix: u32) -> Option<u128> {
    let bytes = digits.as_bytes();
    let mut value: u128 = 0;
    let mut saw_digit = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let prev_ok = i > 0 && bytes[i - 1] != b'_';
            let next_ok = bytes.get(i + 1).is_some_and(|&n| n != b'_');
            if !prev_ok || !next_ok {
                return None;
            }
            continue;
        }
        let d = char::from(b).to_digit(radix)?;
        value = value
            .checked_mul(u128::from(radix))?
            .checked_add(u128::from(d))?;
        saw_digit = true;
    }
    saw_digit.then_some(value)
}

/// Rule 6: a YAML 1.2 float spelling or what Rust's parser takes; `Some` non-finite for
/// `.inf`/`.nan` spellings and for numerals overflowing `f64`.
fn parse_float(t: &str) -> Option<f64> {
    let (negative, unsigned) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    match unsigned {
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        ".inf" | ".Inf" | ".INF" if negative => return Some(f64::NEG_INFINITY),
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        _ => {}
    }
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Some(v),
        // `inf`, `infinity`, `nan` are strings; `1e999` is a numeral that overflows.
        Ok(v) if unsigned.as_bytes().first().is_some_and(u8::is_ascii_digit) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_the_core_schema() {
        use Scalar::*;
        let cases: &[(&str, Scalar)] = &[
            ("", Null),
            ("~", Null),
            ("null", Null),
            ("NULL", Null),
            ("nUll", Str),
            ("true", Bool(true)),
            ("False", Bool(false)),
            ("yes", Str),
            ("on", Str),
            ("0", Int(0)),
            ("-0", Int(0)),
            ("+12", Int(12)),
            ("1_000", Int(1000)),
            ("1__0", Str),
            ("_1", Str),
            ("0x1f", Int(31)),
            ("0X1F", Str),
            ("0o17", Int(15)),
            ("0b101", Int(5)),
            ("-0x10", Int(-16)),
            ("18446744073709551615", Int(18_446_744_073_709_551_615)),
            ("18446744073709551616", Float(18_446_744_073_709_551_616.0)),
            ("-9223372036854775808", Int(-9_223_372_036_854_775_808)),
            ("-9223372036854775809", Float(-9_223_372_036_854_775_809.0)),
            ("007", Float(7.0)),
            ("-00", Float(-0.0)),
            ("1.5", Float(1.5)),
            (".5", Float(0.5)),
            ("1.", Float(1.0)),
            ("1e3", Float(1000.0)),
            ("inf", Str),
            ("nan", Str),
            ("+.nan", Str),
            ("1.10", Float(1.1)),
            ("127.0.0.1", Str),
            ("127.0.0.1:80", Str),
            ("10s", Str),
        ];
        for (text, want) in cases {
            assert_eq!(resolve(text, true).as_ref(), Ok(want), "{text:?}");
        }
        assert_eq!(resolve("true", false), Ok(Str));
        assert_eq!(resolve("", false), Ok(Str));
        for text in [".inf", "-.Inf", ".nan", "1e999", "-1e999"] {
            assert_eq!(resolve(text, true), Err(NonFinite), "{text:?}");
        }
    }

    #[test]
    fn integer_keys_compare_by_value() {
        assert_eq!(int_key("0xB"), int_key("11"));
        assert_eq!(int_key("0X1F"), int_key("31"));
        assert_eq!(int_key("-0"), int_key("0"));
        assert_eq!(int_key("a"), None);
        assert_eq!(int_key("007"), None);
        assert_eq!(
            int_key("0x10000000000000000"),
            int_key("18446744073709551616")
        );
    }
}
