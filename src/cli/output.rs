//! Printing an answer: `json` is the API's JSON pretty-printed; `table` is an aligned
//! table of the resource's columns for a list, `field: value` lines for one object.

use super::resources::{Op, Resource, Verb};
use serde_json::{json, Value};

pub fn print(r: &Resource, op: &Op, id: Option<&str>, v: Value, json_out: bool) {
    // 204 (delete, revoke): say what was done, in the chosen format.
    let v = if v.is_null() {
        let done = match op.verb {
            Verb::Revoke | Verb::Delete if r.name == "keys" => "revoked",
            _ => "deleted",
        };
        if !json_out {
            println!("{} {} {done}", r.noun, id.unwrap_or_default());
            return;
        }
        json!({ "id": id, done: true })
    } else {
        v
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    } else if let Some(rows) = r.rows {
        print!("{}", table(r.columns, &rows(&v)));
    } else if let Value::Array(items) = &v {
        print!("{}", table(r.columns, items));
    } else {
        print!("{}", fields(r.columns, &v));
    }
    if v.get("key").is_some() && matches!(op.verb, Verb::Create | Verb::Rotate) {
        eprintln!("note: the key's secret is shown only this once; store it now");
    }
}

/// An aligned table: upper-case headers, then one line per row.
pub fn table(columns: &[&str], rows: &[Value]) -> String {
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(row.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in std::iter::once(&header).chain(cells.iter()) {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `field: value` lines: the resource's columns first, then the object's other fields.
pub fn fields(columns: &[&str], v: &Value) -> String {
    let Value::Object(obj) = v else {
        return format!("{}\n", cell(Some(v)));
    };
    let mut keys: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| obj.contains_key(*c))
        .collect();
    keys.extend(
        obj.keys()
            .map(String::as_str)
            .filter(|k| !columns.contains(k)),
    );
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for k in keys {
        let label = format!("{k}:");
        out.push_str(&format!("{label:<width$} {}\n", cell(obj.get(k))));
    }
    out
}

/// One value on one line: strings bare, `-` for none, `action:resource` for a
/// permission, `k=v` pairs for other objects, lists comma-separated.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::Object(o)) => match (o.get("action"), o.get("resource"), o.len()) {
            (Some(Value::String(a)), Some(Value::String(r)), 2) => format!("{a}:{r}"),
            _ => o
                .iter()
                .map(|(k, v)| format!("{k}={}", cell(Some(v))))
                .collect::<Vec<_>>()
                .join(" "),
        },
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned_with_headers() {
        let rows = vec![
            json!({"id": "acme", "name": "Acme Corp", "tier": "pro"}),
            json!({"id": "b", "name": "B", "tier": null}),
        ];
        assert_eq!(
            table(&["id", "name", "tier"], &rows),
            "ID    NAME       TIER\nacme  Acme Corp  pro\nb     B          -\n"
        );
    }

    #[test]
    fn nested_values_fit_on_one_line() {
        let v = json!({"role": "dev", "permissions": [{"action": "read", "resource": "*"}],
            "rate_limit": {"max_requests": 5, "window_seconds": 60}});
        let out = fields(&["role", "permissions"], &v);
        assert!(out.contains("role:        dev\n"), "{out}");
        assert!(out.contains("permissions: read:*\n"), "{out}");
        assert!(out.contains("max_requests=5 window_seconds=60"), "{out}");
    }
}
