//! `GET /api/clients`: who is connected (in cluster mode, the whole fleet), or with a
//! selector (`fleet::selector`) the devices it picks.

use std::sync::Arc;

use aip_protocol::errors::http as detail;
use aip_protocol::time::http_timestamp;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::job_schema::ClientQuery;
use super::responses::{ClientsResponses, Guarded};
use crate::fleet::Selector;
use crate::state::AppState;

/// `GET /api/clients?client_id=&platform=&tag=k=v`: every client, or the devices a
/// selector picks (`fleet::selector`; none matching is a 404 naming the selector).
#[utoipa::path(
    get,
    path = "/api/clients",
    tag = "clients",
    params(ClientQuery),
    responses(ClientsResponses, Guarded)
)]
pub async fn clients(
    State(app): State<Arc<AppState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let selecting = q
        .iter()
        .any(|(k, _)| matches!(k.as_str(), "client_id" | "platform" | "tag"));
    let selector = if selecting {
        let s = Selector::from_query(q.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| ApiError::bad_request(detail::invalid_selector(&e)))?;
        Some(s)
    } else {
        None
    };
    if let Some(cluster) = &app.cluster {
        return Ok(Json(fleet(&app, cluster, selector.as_ref()).await?));
    }
    let all = match &selector {
        Some(s) => {
            let picked: Vec<_> = app
                .registry
                .list()
                .into_iter()
                .filter(|e| s.matches(e))
                .collect();
            if picked.is_empty() {
                return Err(no_match(s));
            }
            picked
        }
        None => app.registry.list(),
    };
    Ok(Json(json!({
        "online_clients": all.iter().map(|c| c.client_id.clone()).collect::<Vec<_>>(),
        "clients": all.iter().map(|c| json!({
            "client_id": c.client_id,
            "type": c.role.as_str(),
            "connected_at": http_timestamp(c.connected_at),
            "last_seen": http_timestamp(c.conn.last_seen()),
            "platform": c.platform,
            "target_id": c.scope,
            "tags": super::events::tags_of(c),
            "sessions": c.as_executor.lock().len() + c.as_requester.lock().len(),
        })).collect::<Vec<_>>(),
    })))
}

/// `404` naming a selector no device matches.
fn no_match(selector: &Selector) -> ApiError {
    ApiError::not_found(&detail::no_device_matches(&selector.to_string()))
}

/// Cluster mode: every client of every node, each with its node (with a selector: the
/// devices it picks); the ones connected here as this node sees them now.
async fn fleet(
    app: &AppState,
    cluster: &crate::cluster::Cluster,
    selector: Option<&Selector>,
) -> Result<Value, ApiError> {
    let mut all = cluster.fleet().await?;
    if let Some(s) = selector {
        all.retain(|c| s.matches_presence(c));
        if all.is_empty() {
            return Err(no_match(s));
        }
    }
    for c in &mut all {
        let local = c["client_id"]
            .as_str()
            .and_then(|id| app.registry.get(id))
            .filter(|_| c["node"] == cluster.node());
        if let Some(e) = local {
            c["last_seen"] = json!(http_timestamp(e.conn.last_seen()));
        }
        let tags = c["metadata"]["tags"].clone();
        if let Some(obj) = c.as_object_mut() {
            obj.remove("metadata");
            obj.remove("system_info");
            obj.insert(
                "tags".into(),
                if tags.is_object() { tags } else { Value::Null },
            );
        }
    }
    Ok(json!({
        "online_clients": all.iter().map(|c| c["client_id"].clone()).collect::<Vec<_>>(),
        "clients": all,
    }))
}
