//! The suite file's front end: a `[[test]]` table → [`Entry`]s, keeping each number's digits
//! as written, so that `eps = 8e-3` names its test `pgd_eps_8e_3` as the attribute does.

use ::toml::de::{DeTable, DeValue};

use crate::check::Entry;
use crate::value::{Number, Value};

/// The value a TOML value stands for.
pub fn value(written: &DeValue<'_>) -> Value {
    match written {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let text = i.as_str();
            let mut number = Number::parse(text, true);
            // `0x10`, `0o7`, `0b1`: in base 10, as syn gives the attribute's digits.
            if i.radix() != 10 {
                let digits = number.digits.get(2..).unwrap_or("");
                if let Ok(v) = u64::from_str_radix(digits, i.radix()) {
                    number.digits = v.to_string();
                }
            }
            Value::Number(number)
        }
        DeValue::Float(f) => Value::Number(Number::parse(f.as_str(), false)),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Other(format!("the date-time `{d}`")),
        DeValue::Array(items) => Value::List(items.iter().map(|v| value(v.get_ref())).collect()),
        DeValue::Table(_) => Value::Other("a table (only literals are accepted)".into()),
    }
}

/// The entries of one `[[test]]` table, in the file's order, but for the keys `skip` names
/// (the suite's own, such as `model`).
pub fn entries(table: &DeTable<'_>, skip: &[&str]) -> Vec<Entry> {
    let mut entries: Vec<(usize, Entry)> = table
        .iter()
        .filter(|(k, _)| !skip.contains(&k.get_ref().as_ref()))
        .map(|(k, v)| {
            (
                k.span().start,
                Entry::new(k.get_ref().to_string(), value(v.get_ref())),
            )
        })
        .collect();
    entries.sort_by_key(|(at, _)| *at);
    entries.into_iter().map(|(_, e)| e).collect()
}

/// Parses `text` as one table of entries: `attack = "pgd"\neps = 8e-3`.
pub fn parse_entries(text: &str) -> Result<Vec<Entry>, String> {
    let table = DeTable::parse(text).map_err(|e| e.to_string())?;
    Ok(entries(table.get_ref(), &[]))
}
