//! `tenantgate explain METHOD PATH [-H 'name: value']… [--host H] [--client-ip IP]`:
//! `POST /v1/explain`, printed as a trace. A refusal explained is a success (exit 0);
//! exit 1 is an API error, 2 a usage error.

use super::resources::Method;
use super::{connection, connection_args, output, runtime};
use crate::Fatal;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{json, Map, Value};

pub fn command() -> Command {
    connection_args(
        Command::new("explain")
            .about("Why the proxy would allow or refuse a request, stage by stage")
            .long_about(
                "Asks the admin API (POST /v1/explain) what the proxy would decide for a \
                 request described by its method, path and headers: route, scrub, \
                 authenticate, tenant, authorize, limit, quota. Nothing is spent or \
                 metered, and credentials are never printed back.\n\nExample:\n  \
                 tenantgate explain GET /api/v1/resources -H \"X-API-Key: $KEY\"",
            )
            .arg(Arg::new("method").value_name("METHOD").required(true))
            .arg(Arg::new("path").value_name("PATH").required(true))
            .arg(
                Arg::new("header")
                    .short('H')
                    .long("header")
                    .value_name("NAME: VALUE")
                    .action(ArgAction::Append)
                    .value_parser(parse_header)
                    .help("A request header (repeatable)"),
            )
            .arg(
                Arg::new("host")
                    .long("host")
                    .value_name("HOST")
                    .help("The Host the request is sent to (tenant domains)"),
            )
            .arg(
                Arg::new("client_ip")
                    .long("client-ip")
                    .value_name("IP")
                    .help("The client address IP allow-lists see"),
            ),
    )
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_owned(), v.trim().to_owned())),
        _ => Err("must be 'Name: value'".into()),
    }
}

pub fn run(m: &ArgMatches) -> Result<(), Fatal> {
    let conn = connection(m)?;
    let mut headers = Map::new();
    for (n, v) in m
        .get_many::<(String, String)>("header")
        .into_iter()
        .flatten()
    {
        headers.insert(n.clone(), json!(v));
    }
    let mut body = json!({
        "method": m.get_one::<String>("method").cloned().unwrap_or_default().to_uppercase(),
        "path": m.get_one::<String>("path").cloned().unwrap_or_default(),
        "headers": headers,
    });
    if let (Some(h), Some(o)) = (m.get_one::<String>("host"), body.as_object_mut()) {
        o.insert("host".into(), json!(h));
    }
    if let (Some(ip), Some(o)) = (m.get_one::<String>("client_ip"), body.as_object_mut()) {
        o.insert("client_ip".into(), json!(ip));
    }
    let v = runtime()?.block_on(
        conn.client
            .send(Method::Post, "/v1/explain", &[], Some(&body)),
    )?;
    if conn.json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
        return Ok(());
    }
    print!("{}", render(&v));
    Ok(())
}

/// The trace as text: the verdict, then one line per stage.
pub fn render(v: &Value) -> String {
    let decision = v["decision"].as_str().unwrap_or("?");
    let status = v["status"].as_u64().unwrap_or(0);
    let mut out = match v["code"].as_str() {
        Some(code) => format!("decision: {decision} ({status} {code})\n"),
        None => format!("decision: {decision} (proxied upstream)\n"),
    };
    if let Some(t) = v["tenant_id"].as_str() {
        out.push_str(&format!("tenant:   {t}\n"));
    }
    out.push('\n');
    let rows: Vec<Value> = v["steps"].as_array().cloned().unwrap_or_default();
    out.push_str(&output::table(&["stage", "outcome", "detail"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_name_colon_value() {
        assert_eq!(
            parse_header("X-API-Key: tg_a_b").unwrap(),
            ("X-API-Key".to_owned(), "tg_a_b".to_owned())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header(": v").is_err());
    }

    #[test]
    fn renders_the_verdict_and_each_stage() {
        let v = json!({"decision": "deny", "status": 403, "code": "forbidden",
            "steps": [{"stage": "route", "outcome": "pass", "detail": "ok"},
                      {"stage": "authorize", "outcome": "deny", "detail": "role x may not"}]});
        let text = render(&v);
        assert!(text.starts_with("decision: deny (403 forbidden)"));
        assert!(text.contains("authorize"));
        assert!(text.contains("role x may not"));
    }
}
