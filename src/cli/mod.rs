//! `tenantgate tenants|keys|users|policies|plans|usage <verb>`: the admin API from the
//! command line. The resources are described in [`resources::RESOURCES`]; the clap
//! commands and the verbs are generic over that table. The CLI speaks only HTTP to
//! the admin API (`--admin-url`, `--token`).
//!
//! Exit codes: 0 success, 1 an API (or connection) error, its message printed,
//! 2 a usage error.

mod apply;
mod client;
mod explain;
mod output;
mod resources;

use crate::Fatal;
use clap::{Arg, ArgAction, ArgMatches, Command};
use resources::{Field, Kind, Op, Place, Resource, Verb, RESOURCES};
use serde_json::{json, Map, Value};

pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8081";

/// Help heading of the options every resource command takes.
const CONNECTION: &str = "Admin API";

/// Adds one subcommand per resource, `explain`, `apply` and `completions` to the
/// binary's command.
pub fn augment(mut cmd: Command) -> Command {
    for r in RESOURCES {
        cmd = cmd.subcommand(resource_command(r));
    }
    cmd.subcommand(explain::command())
        .subcommand(apply::command())
        .subcommand(
            Command::new("completions")
                .about("Print a shell completion script (bash, zsh or fish)")
                .long_about(
                    "Print a shell completion script. Install, e.g.:\n  \
                     bash: tenantgate completions bash > /etc/bash_completion.d/tenantgate\n  \
                     zsh:  tenantgate completions zsh > \"${fpath[1]}/_tenantgate\"\n  \
                     fish: tenantgate completions fish > ~/.config/fish/completions/tenantgate.fish",
                )
                .arg(
                    Arg::new("shell")
                        .required(true)
                        .value_parser(["bash", "zsh", "fish"]),
                ),
        )
}

/// Whether `name` is one of the subcommands this module runs.
pub fn handles(name: &str) -> bool {
    resources::find(name).is_some() || matches!(name, "explain" | "apply")
}

/// Runs `tenantgate completions SHELL` for the binary's whole command `cmd`.
pub fn completions(m: &ArgMatches, mut cmd: Command) -> Result<(), Fatal> {
    use clap_complete::{generate, Shell};
    let shell = match m.get_one::<String>("shell").map(String::as_str) {
        Some("bash") => Shell::Bash,
        Some("zsh") => Shell::Zsh,
        Some("fish") => Shell::Fish,
        _ => return Err(Fatal::usage("completions: name bash, zsh or fish")),
    };
    generate(shell, &mut cmd, "tenantgate", &mut std::io::stdout());
    Ok(())
}

fn resource_command(r: &'static Resource) -> Command {
    let mut cmd = connection_args(
        Command::new(r.name)
            .about(r.about)
            .subcommand_required(true)
            .arg_required_else_help(true),
    );
    for op in r.ops {
        cmd = cmd.subcommand(verb_command(r, op));
    }
    cmd
}

/// `--admin-url`, `--token` and `--output`, shared by every command that talks to
/// the admin API.
pub fn connection_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("admin_url")
            .long("admin-url")
            .env("TENANTGATE_ADMIN_URL")
            .value_name("URL")
            .global(true)
            .help_heading(CONNECTION)
            .help(format!("Admin API base URL [default: {DEFAULT_ADMIN_URL}]")),
    )
    .arg(
        Arg::new("token")
            .long("token")
            .env("TENANTGATE_ADMIN_TOKEN")
            .hide_env_values(true)
            .value_name("TOKEN")
            .global(true)
            .help_heading(CONNECTION)
            .help("Bearer token: the bootstrap token or a tenant admin's login token"),
    )
    .arg(
        Arg::new("output")
            .long("output")
            .short('o')
            .value_name("FORMAT")
            .value_parser(["table", "json"])
            .default_value("table")
            .global(true)
            .help_heading(CONNECTION)
            .help("Output format"),
    )
}

/// The admin API connection a command's matches name.
pub struct Connection {
    pub client: client::Client,
    pub json_out: bool,
}

pub fn connection(m: &ArgMatches) -> Result<Connection, Fatal> {
    let json_out = m.get_one::<String>("output").map(String::as_str) == Some("json");
    let base = m
        .get_one::<String>("admin_url")
        .cloned()
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned());
    let token = m.get_one::<String>("token").cloned().ok_or_else(|| {
        Fatal::usage("no admin token: pass --token or set TENANTGATE_ADMIN_TOKEN")
    })?;
    Ok(Connection {
        client: client::Client::new(&base, &token)?,
        json_out,
    })
}

/// A current-thread runtime for one command's requests.
pub fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::runtime(format!("cannot start the HTTP client: {e}")))
}

fn verb_command(r: &'static Resource, op: &'static Op) -> Command {
    let mut cmd = Command::new(op.verb.name()).about(op.about);
    if op.takes_id() {
        cmd = cmd.arg(Arg::new("id").value_name(r.id_name).required(true));
    }
    if r.tenant_scoped {
        cmd = cmd.arg(
            Arg::new("tenant")
                .long("tenant")
                .short('t')
                .value_name("TENANT_ID")
                .required(true)
                .help("The tenant"),
        );
    }
    let mut has_body = false;
    for f in r.fields.iter().filter(|f| f.verbs.contains(&op.verb)) {
        has_body |= f.place == Place::Body;
        cmd = cmd.arg(field_arg(f));
    }
    if has_body || matches!(op.verb, Verb::Create | Verb::Update) {
        cmd = cmd.arg(
            Arg::new("data")
                .long("data")
                .short('d')
                .value_name("JSON")
                .value_parser(parse_object)
                .help("Request body as a JSON object; the flags above override its fields"),
        );
    }
    cmd
}

fn field_arg(f: &'static Field) -> Arg {
    let arg = Arg::new(f.flag).long(f.flag).help(f.help);
    match f.kind {
        Kind::Str => arg.value_name("VALUE"),
        Kind::Int => arg.value_name("N").value_parser(clap::value_parser!(u64)),
        Kind::List => arg
            .value_name("A,B")
            .value_delimiter(',')
            .action(ArgAction::Append),
        Kind::Permissions => arg
            .value_name("ACTION:RESOURCE")
            .value_parser(parse_permission)
            .action(ArgAction::Append),
    }
}

fn parse_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn parse_permission(s: &str) -> Result<Value, String> {
    match s.split_once(':') {
        Some((a, r)) if !a.is_empty() && !r.is_empty() => Ok(json!({"action": a, "resource": r})),
        _ => Err("must be ACTION:RESOURCE, e.g. read:resources".into()),
    }
}

/// Runs `tenantgate <resource> <verb> …`.
pub fn run(resource: &str, m: &ArgMatches) -> Result<(), Fatal> {
    match resource {
        "explain" => return explain::run(m),
        "apply" => return apply::run(m),
        _ => {}
    }
    let r = resources::find(resource).ok_or_else(|| Fatal::usage("unknown resource"))?;
    let (verb_name, vm) = m
        .subcommand()
        .ok_or_else(|| Fatal::usage(format!("{resource}: name a verb")))?;
    let verb = Verb::ALL
        .into_iter()
        .find(|v| v.name() == verb_name)
        .ok_or_else(|| Fatal::usage(format!("{resource}: unknown verb {verb_name}")))?;
    let op = r
        .op(verb)
        .ok_or_else(|| Fatal::usage(format!("{resource} has no {verb_name}")))?;

    let json_out = vm.get_one::<String>("output").map(String::as_str) == Some("json");
    let base = vm
        .get_one::<String>("admin_url")
        .cloned()
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned());
    let token = vm.get_one::<String>("token").cloned().ok_or_else(|| {
        Fatal::usage("no admin token: pass --token or set TENANTGATE_ADMIN_TOKEN")
    })?;
    let id = arg::<String>(vm, "id");
    let tenant = arg::<String>(vm, "tenant");

    let mut body = arg::<Map<String, Value>>(vm, "data").unwrap_or_default();
    let mut query = Vec::new();
    for f in r.fields.iter().filter(|f| f.verbs.contains(&verb)) {
        let Some(v) = field_value(f, vm) else {
            continue;
        };
        match f.place {
            Place::Body => set_path(&mut body, f.key, v),
            Place::Query => {
                if let Value::String(s) = v {
                    query.push((f.key.join("."), s));
                }
            }
        }
    }

    let client = client::Client::new(&base, &token)?;
    let path =
        |p: &str| -> Result<String, Fatal> { client::fill(p, tenant.as_deref(), id.as_deref()) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::runtime(format!("cannot start the HTTP client: {e}")))?;
    let response = rt.block_on(async {
        if op.merge_current {
            let current = client
                .send(resources::Method::Get, &path(op.path)?, &[], None)
                .await?;
            body = merged(r, current, body);
        }
        let sends_body = matches!(
            op.method,
            resources::Method::Post | resources::Method::Put | resources::Method::Patch
        );
        let sent = sends_body.then(|| Value::Object(body.clone()));
        client
            .send(op.method, &path(op.path)?, &query, sent.as_ref())
            .await
    })?;

    let response = match (op.find_by.is_empty(), id.as_deref()) {
        (false, Some(id)) => pick(r, op, response, id)?,
        _ => response,
    };
    output::print(r, op, id.as_deref(), response, json_out);
    Ok(())
}

/// An argument's value; `None` also when the verb does not define it.
fn arg<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Option<T> {
    m.try_get_one::<T>(id).ok().flatten().cloned()
}

/// The value a field's flag gives, if it was given.
fn field_value(f: &Field, m: &ArgMatches) -> Option<Value> {
    match f.kind {
        Kind::Str => m.get_one::<String>(f.flag).map(|s| json!(s)),
        Kind::Int => m.get_one::<u64>(f.flag).map(|n| json!(n)),
        Kind::List => m.get_many::<String>(f.flag).map(|v| {
            Value::Array(
                v.filter(|s| !s.is_empty())
                    .map(|s| json!(s.trim()))
                    .collect(),
            )
        }),
        Kind::Permissions => m
            .get_many::<Value>(f.flag)
            .map(|v| Value::Array(v.cloned().collect())),
    }
}

/// Sets `obj.a.b… = v`, creating the objects on the way.
fn set_path(obj: &mut Map<String, Value>, key: &[&str], v: Value) {
    match key {
        [] => {}
        [last] => {
            obj.insert((*last).to_owned(), v);
        }
        [first, rest @ ..] => {
            let slot = obj
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                set_path(inner, rest, v);
            }
        }
    }
}

/// The stored object's writable fields (those the resource's flags name), with
/// `changes` applied on top, key by key one level down.
fn merged(r: &Resource, current: Value, changes: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Value::Object(cur) = current {
        for (k, v) in cur {
            if r.fields.iter().any(|f| f.key.first() == Some(&k.as_str())) {
                out.insert(k, v);
            }
        }
    }
    for (k, v) in changes {
        match (out.get_mut(&k), v) {
            (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
            (_, v) => {
                out.insert(k, v);
            }
        }
    }
    out
}

/// The entry of a listing whose `find_by` fields hold `id`.
fn pick(r: &Resource, op: &Op, list: Value, id: &str) -> Result<Value, Fatal> {
    let found = list.as_array().and_then(|items| {
        items.iter().find(|item| {
            op.find_by
                .iter()
                .any(|k| item.get(*k).and_then(Value::as_str) == Some(id))
        })
    });
    found
        .cloned()
        .ok_or_else(|| Fatal::runtime(format!("not_found: {} {id:?} not found", r.noun)))
}
