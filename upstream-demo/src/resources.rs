//! `/api/v1/resources`: tenant-scoped CRUD. Another tenant's row is answered
//! exactly like a missing one (404), since every query filters on the tenant.

use crate::error::ApiError;
use crate::identity::TenantCtx;
use crate::repo::{self, Changes, Resource};
use crate::DemoState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

pub const MAX_NAME_CHARS: usize = 200;
pub const DEFAULT_LIST_LIMIT: i64 = 1000;
pub const MAX_LIST_LIMIT: i64 = 1000;

pub fn routes() -> Router<DemoState> {
    Router::new()
        .route("/api/v1/resources", get(list).post(create))
        .route(
            "/api/v1/resources/{id}",
            get(get_one).put(update).patch(update).delete(delete),
        )
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<Resource>>, ApiError> {
    let rid = &ctx.request_id;
    let Query(params) = params.map_err(|e| ApiError::bad_request(rid, e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::validation(
            rid,
            "limit",
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let offset = params.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::validation(
            rid,
            "offset",
            "offset must not be negative",
        ));
    }
    let mut tx = state.begin(&ctx).await?;
    let rows = repo::list(&mut tx, &ctx.tenant_id, limit, offset)
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    commit(rid, tx).await?;
    Ok(Json(rows))
}

async fn create(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Resource>), ApiError> {
    let rid = &ctx.request_id;
    let body = parse_object(rid, body)?;
    let Some(name) = name_field(rid, &body)? else {
        return Err(ApiError::validation(rid, "name", "name is required"));
    };
    let data = data_field(&body).unwrap_or_else(empty_object);
    let mut tx = state.begin(&ctx).await?;
    let created = repo::insert(
        &mut tx,
        &ctx.tenant_id,
        &name,
        &data,
        ctx.user_id.as_deref(),
    )
    .await
    .map_err(|e| ApiError::store(rid, e))?;
    commit(rid, tx).await?;
    tracing::debug!(request_id = %rid, tenant_id = %ctx.tenant_id, id = %created.id, "resource created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn get_one(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Resource>, ApiError> {
    let rid = &ctx.request_id;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found(rid));
    };
    let mut tx = state.begin(&ctx).await?;
    let row = repo::get(&mut tx, &ctx.tenant_id, &id)
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    commit(rid, tx).await?;
    row.map(Json).ok_or_else(|| ApiError::not_found(rid))
}

/// PUT and PATCH alike: `name` and `data` are each optional; what is absent is kept.
async fn update(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Resource>, ApiError> {
    let rid = &ctx.request_id;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found(rid));
    };
    let body = parse_object(rid, body)?;
    let changes = Changes {
        name: name_field(rid, &body)?,
        data: data_field(&body),
    };
    let mut tx = state.begin(&ctx).await?;
    let row = repo::update(&mut tx, &ctx.tenant_id, &id, &changes)
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    commit(rid, tx).await?;
    row.map(Json).ok_or_else(|| ApiError::not_found(rid))
}

async fn delete(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let rid = &ctx.request_id;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found(rid));
    };
    let mut tx = state.begin(&ctx).await?;
    let deleted = repo::delete(&mut tx, &ctx.tenant_id, &id)
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    commit(rid, tx).await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(rid))
    }
}

/// Commits the tenant's transaction; a failure is the store's (503).
pub(crate) async fn commit(
    rid: &str,
    tx: sqlx::Transaction<'static, sqlx::Any>,
) -> Result<(), ApiError> {
    tx.commit()
        .await
        .map_err(|e| ApiError::store(rid, e.into()))
}

/// The request body as a JSON object; anything else is a 400 (413 when too large).
pub(crate) fn parse_object(
    rid: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(rid)
        } else {
            ApiError::bad_request(rid, "cannot read the request body")
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            rid,
            "request body must be a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            rid,
            "request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(rid, format!("malformed JSON: {e}"))),
    }
}

/// `name` when present: a non-blank string of at most 200 characters.
fn name_field(rid: &str, body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("name") {
        None => Ok(None),
        Some(Value::String(name)) => {
            if name.trim().is_empty() {
                Err(ApiError::validation(rid, "name", "name must not be empty"))
            } else if name.chars().count() > MAX_NAME_CHARS {
                Err(ApiError::validation(
                    rid,
                    "name",
                    format!("name must be at most {MAX_NAME_CHARS} characters"),
                ))
            } else {
                Ok(Some(name.clone()))
            }
        }
        Some(_) => Err(ApiError::validation(rid, "name", "name must be a string")),
    }
}

/// `data` when present; an explicit `null` means the empty object.
fn data_field(body: &Map<String, Value>) -> Option<Value> {
    match body.get("data") {
        None => None,
        Some(Value::Null) => Some(empty_object()),
        Some(v) => Some(v.clone()),
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn name_rules() {
        assert_eq!(name_field("r", &obj(json!({}))).unwrap(), None);
        assert_eq!(
            name_field("r", &obj(json!({"name": "a"})))
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert!(name_field("r", &obj(json!({"name": ""}))).is_err());
        assert!(name_field("r", &obj(json!({"name": "   "}))).is_err());
        assert!(name_field("r", &obj(json!({"name": 5}))).is_err());
        let max = "é".repeat(MAX_NAME_CHARS);
        assert!(name_field("r", &obj(json!({ "name": max }))).is_ok());
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let err = name_field("r", &obj(json!({ "name": long }))).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn body_must_be_a_json_object() {
        assert!(parse_object("r", Ok(Bytes::from_static(b"{\"a\":1}"))).is_ok());
        for bad in [&b""[..], b"  ", b"{", b"[]", b"\"x\"", b"null"] {
            let err = parse_object("r", Ok(Bytes::from_static(bad))).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn data_null_is_empty_object() {
        assert_eq!(data_field(&obj(json!({"data": null}))), Some(json!({})));
        assert_eq!(data_field(&obj(json!({"data": [1]}))), Some(json!([1])));
        assert_eq!(data_field(&obj(json!({}))), None);
    }
}
